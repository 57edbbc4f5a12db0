"""check_spec, the workflow's own check of a spec (a local activity on the control queue): the
API's rules under the worker's switches, as a verdict (None, or the ENGINE_UNAVAILABLE failure).
Called as a plain coroutine here; through a real workflow in tests/test_secrets_e2e.py."""

import pytest

from berth.activities.placement import check_spec
from berth.domain.env_policy import ALLOW_UNSAFE_ENGINE_ARGS, ALLOW_UNSAFE_ENV
from berth.domain.errors import ErrorCode
from berth.domain.pipeline import SpecCheck


@pytest.mark.parametrize(
    "request_, switches, refused_names",
    [
        (SpecCheck(engine="auto"), {}, None),
        (SpecCheck(engine="auto", env_names=["HF_TOKEN", "OMP_NUM_THREADS"]), {}, None),
        (SpecCheck(engine="llamacpp", engine_args=["--n-gpu-layers", "0", "--parallel", "2"]), {}, None),
        (SpecCheck(engine="auto", env_names=["LD_PRELOAD"]), {}, ["LD_PRELOAD"]),
        (SpecCheck(engine="auto", env_names=["ld_preload", "PATH", "HF_TOKEN"]), {}, ["ld_preload", "PATH"]),
        (SpecCheck(engine="auto", env_names=["LD_PRELOAD"]), {ALLOW_UNSAFE_ENV: "1"}, None),
        (SpecCheck(engine="llamacpp", engine_args=["--host", "0.0.0.0"]), {ALLOW_UNSAFE_ENGINE_ARGS: "1"}, ["--host"]),
        (SpecCheck(engine="vllm", engine_args=["--trust-remote-code"]), {}, ["--trust-remote-code"]),
        (SpecCheck(engine="vllm", engine_args=["--trust-remote-code"]), {ALLOW_UNSAFE_ENGINE_ARGS: "1"}, None),
        (SpecCheck(engine="auto", engine_args=["--port", "1"], env_names=["PYTHONPATH"]), {}, ["--port", "PYTHONPATH"]),
    ],
)
async def test_check_spec_applies_the_apis_rules_under_the_workers_switches(monkeypatch, request_, switches, refused_names):
    for switch in (ALLOW_UNSAFE_ENV, ALLOW_UNSAFE_ENGINE_ARGS):
        monkeypatch.delenv(switch, raising=False)
    for switch, value in switches.items():
        monkeypatch.setenv(switch, value)
    verdict = await check_spec(request_)
    if refused_names is None:
        assert verdict is None
        return
    assert verdict.code is ErrorCode.ENGINE_UNAVAILABLE and verdict.message.startswith("berth refuses this spec: ")
    for name in refused_names:
        assert name in verdict.message
