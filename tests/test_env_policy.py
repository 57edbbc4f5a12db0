"""A spec's `env`: names that load code or find programs are refused (unless the node's operator
allows them), names and values no environment can hold are refused by the spec itself, and the
node refuses at launch what the API would have refused, before anything starts."""

import psutil
import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from berth.node.engine_launch import launch, refuse_unsafe
from berth.domain.env_policy import UnsafeEnv, check_env, env_problems, unsafe_env_reason
from berth.domain.errors import ErrorCode
from berth.domain.pipeline import LaunchRequest
from berth.domain.spec import DeploymentSpec
from berth.engines.engine_args import spec_refusal
from berth.settings import Settings

REFUSED = [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "ld_preload", "DYLD_INSERT_LIBRARIES", "PYTHONPATH",
    "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONWARNINGS", "PATH", "HOME", "NODE_OPTIONS",
    "PERL5LIB", "RUBYOPT", "BASH_ENV", "ENV", "IFS", "GCONV_PATH", "GLIBC_TUNABLES", "OPENSSL_CONF",
    "SSL_CERT_FILE", "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE", "TRITON_CACHE_DIR",
    "TORCHINDUCTOR_CACHE_DIR", "VLLM_PLUGINS", "CC", "CUDA_HOME", "TMPDIR", "BERTH_HOME", "BERTH_INSTANCE",
]
ALLOWED = [
    "HF_TOKEN", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTHONUNBUFFERED",
    "MALLOC_ARENA_MAX", "VLLM_ATTENTION_BACKEND", "VLLM_LOGGING_LEVEL", "HTTPS_PROXY", "A",
]


@pytest.mark.parametrize("name", REFUSED)
def test_names_that_load_code_or_find_files_are_refused_by_name(name):
    assert unsafe_env_reason(name)
    with pytest.raises(UnsafeEnv) as refused:
        check_env({name: "/tmp/x"})
    assert f"env {name} is refused" in str(refused.value) and "BERTH_ALLOW_UNSAFE_ENV=1" in str(refused.value)
    check_env({name: "/tmp/x"}, allow_unsafe=True)  # the operator's call


@pytest.mark.parametrize("name", ALLOWED)
def test_ordinary_names_pass(name):
    assert unsafe_env_reason(name) is None
    check_env({name: "1"})


@pytest.mark.parametrize("env, words", [
    ({"": "x"}, "needs a name"),
    ({"A=B": "x"}, "'=' and NUL"),
    ({"A\0B": "x"}, "'=' and NUL"),
    ({"1BAD": "x"}, "not starting with a digit"),
    ({"A": "x\0y"}, "NUL character"),
])
def test_what_no_environment_can_hold_is_refused_even_when_allowed(env, words):
    [problem] = env_problems(env, allow_unsafe=True)
    assert words in problem
    with pytest.raises(ValidationError, match="env"):
        DeploymentSpec(name="ok", model="m.gguf", env=env)


def test_the_spec_itself_does_not_apply_the_node_policy():
    """A node rule that changes must not make specs already in workflow histories unreadable."""
    spec = DeploymentSpec(name="ok", model="m.gguf", env={"LD_PRELOAD": "/x"}, engine_args=["--host", "0.0.0.0"])
    refusal = spec_refusal(spec.engine, spec.engine_args, spec.env)
    assert "LD_PRELOAD" in refusal and "--host" in refusal


def request(**fields) -> LaunchRequest:
    return LaunchRequest(instance_id="unsafe-1a", deployment="unsafe", engine="llamacpp",
                         model_path="/nonexistent.gguf", port=20001, **fields)


@pytest.mark.parametrize("fields, word", [
    ({"env": {"LD_PRELOAD": "/tmp/evil.so"}}, "LD_PRELOAD"),
    ({"engine_args": ["--host", "0.0.0.0"]}, "--host"),
    ({"engine_args": ["--dtype", "half"]}, "--dtype"),  # checked for the engine the node chose
])
def test_the_node_refuses_at_launch_before_anything_starts(tmp_path, monkeypatch, fields, word):
    monkeypatch.delenv("BERTH_ALLOW_UNSAFE_ENV", raising=False)
    monkeypatch.delenv("BERTH_ALLOW_UNSAFE_ENGINE_ARGS", raising=False)
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path)})
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ApplicationError) as refused:
        launch(settings, request(**fields), first_attempt=True)
    assert refused.value.type == ErrorCode.ENGINE_UNAVAILABLE.value and refused.value.non_retryable
    assert word in refused.value.message and "this node refuses" in refused.value.message
    assert {p.pid for p in psutil.Process().children(recursive=True)} == children  # nothing started
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())


def test_the_nodes_operator_may_allow_unsafe_env(monkeypatch):
    monkeypatch.setenv("BERTH_ALLOW_UNSAFE_ENV", "1")
    refuse_unsafe(request(env={"LD_LIBRARY_PATH": "/opt/lib"}))  # no error
    with pytest.raises(ApplicationError, match="--host"):  # an owned flag, never
        refuse_unsafe(request(engine_args=["--host", "0.0.0.0"]))
