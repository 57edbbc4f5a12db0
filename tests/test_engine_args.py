"""engine_args: each engine's flag table (owned and outside flags refused, unknown flags refused with
the accepted ones listed, values checked), berth's own flags last in what reaches the engine, and the
xllamacpp launcher mapping every llama.cpp flag of the table onto CommonParams."""

import subprocess
import sys

import pytest
import xllamacpp

from berth.domain.pipeline import LaunchRequest
from berth.engines import llamacpp_flags, xllamacpp_server
from berth.engines.engine_args import TABLES, check_engine_args, spec_refusal
from berth.engines.flags import EngineArgsError
from berth.engines.llamacpp import LlamaCppEngine
from berth.engines.mlx import MlxEngine
from berth.engines.vllm import VllmEngine

REFUSED = [  # engine, args, the words the refusal must hold
    ("llamacpp", ["--host", "0.0.0.0"], ["--host", "berth sets it"]),
    ("llamacpp", ["--port", "1"], ["--port"]),
    ("llamacpp", ["-m", "/etc/passwd"], ["-m", "`model`"]),
    ("llamacpp", ["--alias", "x"], ["--alias"]),
    ("llamacpp", ["--api-key", "k"], ["--api-key", "authentication"]),
    ("llamacpp", ["-c", "4096"], ["-c", "context_size"]),
    ("llamacpp", ["--ctx-size=4096"], ["--ctx-size", "context_size"]),
    ("llamacpp", ["--lora", "/tmp/x.gguf"], ["--lora", "outside the model"]),
    ("llamacpp", ["--mmproj", "/tmp/x.gguf"], ["--mmproj"]),
    ("llamacpp", ["--chat-template-file", "/etc/shadow"], ["--chat-template-file"]),
    ("llamacpp", ["--grammar-file", "/etc/shadow"], ["--grammar-file"]),
    ("llamacpp", ["--slot-save-path", "/"], ["--slot-save-path"]),
    ("llamacpp", ["--tools", "all"], ["--tools", "run tools"]),
    ("llamacpp", ["--hf-repo", "org/repo"], ["--hf-repo"]),
    ("vllm", ["--host", "0.0.0.0"], ["--host"]),
    ("vllm", ["--max-model-len", "9"], ["--max-model-len", "context_size"]),
    ("vllm", ["--served-model-name", "x"], ["--served-model-name"]),
    ("vllm", ["--trust-remote-code"], ["--trust-remote-code", "BERTH_ALLOW_UNSAFE_ENGINE_ARGS=1"]),
    ("vllm", ["--tokenizer", "/x"], ["--tokenizer", "outside the model"]),
    ("vllm", ["--middleware", "evil.Mod"], ["--middleware"]),
    ("vllm", ["--chat-template", "/x.jinja"], ["--chat-template"]),
    ("mlx", ["--adapter-path", "/x"], ["--adapter-path"]),
    ("mlx", ["--trust-remote-code"], ["--trust-remote-code", "operator"]),
    ("mlx", ["--port=1"], ["--port"]),
]


@pytest.mark.parametrize("engine, args, words", REFUSED, ids=lambda v: str(v))
def test_owned_and_outside_flags_are_refused_by_name(engine, args, words):
    with pytest.raises(EngineArgsError) as refused:
        check_engine_args(engine, args)
    for word in words:
        assert word in str(refused.value)


UNKNOWN_AND_BAD = [
    ("llamacpp", ["--frobnicate"], ["--frobnicate", "accepted:", "--n-gpu-layers", "--parallel"]),
    ("llamacpp", ["--hos", "0.0.0.0"], ["--hos", "accepted:"]),  # no prefix matching, unlike argparse
    ("llamacpp", ["--mlock"], ["--mlock", "accepted:"]),
    ("llamacpp", ["--parallel", "two"], ["--parallel", "'two'", "whole number"]),
    ("llamacpp", ["--parallel", "0"], ["--parallel", "from 1"]),
    ("llamacpp", ["--flash-attn", "maybe"], ["--flash-attn", "on, off, auto"]),
    ("llamacpp", ["--cache-type-k", "q9"], ["--cache-type-k", "f16"]),
    ("llamacpp", ["--temp", "nan"], ["--temp", "number"]),
    ("llamacpp", ["--rope-freq-base", "1e999"], ["--rope-freq-base"]),
    ("llamacpp", ["--parallel"], ["--parallel", "needs a value"]),
    ("llamacpp", ["--seed", "--host"], ["--seed", "'--host'"]),
    ("llamacpp", ["--metrics=yes"], ["--metrics", "takes no value"]),
    ("llamacpp", ["--threads", "1", "-t", "2"], ["-t", "twice"]),
    ("llamacpp", ["model.gguf"], ["'model.gguf'", "not a flag"]),
    ("llamacpp", ["--tensor-split", "3;1"], ["--tensor-split"]),
    ("vllm", ["--quantization", "../x"], ["--quantization", "no paths"]),
    ("vllm", ["--dtype", "int3"], ["--dtype", "bfloat16"]),
    ("vllm", ["--max_model_len", "9"], ["--max_model_len", "accepted:"]),
    ("vllm", ["--gpu-memory-utilization", "2"], ["--gpu-memory-utilization", "to 1"]),
    ("mlx", ["--log-level", "LOUD"], ["--log-level", "DEBUG"]),
]


@pytest.mark.parametrize("engine, args, words", UNKNOWN_AND_BAD, ids=lambda v: str(v))
def test_unknown_flags_and_bad_values_are_refused(engine, args, words):
    with pytest.raises(EngineArgsError) as refused:
        check_engine_args(engine, args)
    for word in words:
        assert word in str(refused.value)


ACCEPTED = [
    ("llamacpp", ["-ngl", "0", "-fa", "off", "-np", "2", "-ctk", "f16", "-b", "256", "-t", "1"],
     ["--n-gpu-layers", "0", "--flash-attn", "off", "--parallel", "2", "--cache-type-k", "f16",
      "--batch-size", "256", "--threads", "1"]),
    ("llamacpp", ["--parallel=4", "-nkvo", "--no-cont-batching", "--seed", "-1", "-ts", "3/1"],
     ["--parallel", "4", "--no-kv-offload", "--no-cont-batching", "--seed", "-1", "--tensor-split", "3,1"]),
    ("llamacpp", ["--rope-scaling", "yarn", "--rope-freq-scale", "0.25", "--yarn-orig-ctx", "4096"],
     ["--rope-scaling", "yarn", "--rope-freq-scale", "0.25", "--yarn-orig-ctx", "4096"]),
    ("vllm", ["--dtype", "float16", "-tp", "2", "--enforce-eager", "--no-enable-prefix-caching"],
     ["--dtype", "float16", "--tensor-parallel-size", "2", "--enforce-eager", "--no-enable-prefix-caching"]),
    ("vllm", ["--quantization", "awq", "--kv-cache-dtype=fp8"], ["--quantization", "awq", "--kv-cache-dtype", "fp8"]),
    ("mlx", ["--max-tokens", "64", "--temp", "0.2"], ["--max-tokens", "64", "--temp", "0.2"]),
    ("llamacpp", [], []),
]


@pytest.mark.parametrize("engine, args, canonical", ACCEPTED, ids=lambda v: str(v))
def test_accepted_flags_come_back_in_one_spelling(engine, args, canonical):
    assert check_engine_args(engine, args) == canonical


def test_the_operator_may_allow_remote_code_never_owned_flags():
    allowed = {"BERTH_ALLOW_UNSAFE_ENGINE_ARGS": "1"}
    assert check_engine_args("vllm", ["--trust-remote-code"], allow_unsafe=True) == ["--trust-remote-code"]
    assert spec_refusal("mlx", ["--trust-remote-code"], {}, allowed) is None
    assert "--host" in spec_refusal("vllm", ["--host", "0.0.0.0"], {}, allowed)
    assert "--lora" in spec_refusal("llamacpp", ["--lora", "/x"], {}, allowed)


def test_auto_accepts_one_engines_flags_and_names_the_refused_one():
    assert check_engine_args("auto", ["--n-gpu-layers", "0"]) == ["--n-gpu-layers", "0"]
    assert check_engine_args("auto", ["--dtype", "half"]) == ["--dtype", "half"]
    with pytest.raises(EngineArgsError, match=r"--host is refused .*engine is auto"):
        check_engine_args("auto", ["--host", "0.0.0.0"])
    with pytest.raises(EngineArgsError, match=r"--dtype is not a llamacpp flag"):  # a mix of two engines
        check_engine_args("auto", ["--n-gpu-layers", "0", "--dtype", "half"])


def request(engine: str, args: list[str], **extra) -> LaunchRequest:
    return LaunchRequest(instance_id="d-1a", deployment="d", engine=engine, model_path="/models/m.gguf",
                         port=20001, engine_args=args, **extra)


def test_llamacpp_puts_berths_flags_last_and_a_user_threads_replaces_berths_default(monkeypatch):
    monkeypatch.setenv("BERTH_LLAMA_SERVER", "/usr/bin/llama-server")
    argv = LlamaCppEngine().command(request("llamacpp", ["-np", "2", "-t", "1"], context_size=512)).argv
    assert argv == ["/usr/bin/llama-server", "--parallel", "2", "--threads", "1",
                    "--model", "/models/m.gguf", "--host", "127.0.0.1", "--port", "20001",
                    "--alias", "d", "--metrics", "--ctx-size", "512"]
    assert LlamaCppEngine().command(request("llamacpp", [])).argv[1] == "--threads"  # berth's default
    assert LlamaCppEngine().command(request("llamacpp", ["--metrics"])).argv.count("--metrics") == 1  # not twice
    with pytest.raises(EngineArgsError, match="--host"):
        LlamaCppEngine().command(request("llamacpp", ["--host", "0.0.0.0"]))


def test_mlx_and_vllm_put_berths_flags_last():
    argv = MlxEngine().command(request("mlx", ["--temp", "0.1"])).argv
    assert argv[3:] == ["--temp", "0.1", "--model", "/models/m.gguf", "--host", "127.0.0.1", "--port", "20001"]
    args = VllmEngine().server_args(request("vllm", ["--dtype", "half"]), "/models/m")
    assert args[-6:] == ["--model", "/models/m", "--port", "20001", "--served-model-name", "d"]


# ---- the xllamacpp launcher: the table is what it maps ------------------------------------------

SAMPLE = {"int": "2", "float": "0.5", "floats": "3,1"}


def sample_args(flag) -> list[str]:
    if flag.kind == "bool":
        return [flag.name]
    return [flag.name, flag.choices[-1] if flag.kind == "choice" else SAMPLE[flag.kind]]


@pytest.mark.parametrize("flag", llamacpp_flags.FLAGS, ids=lambda f: f.name)
def test_every_llamacpp_flag_sets_its_commonparams_attribute(flag):
    args = xllamacpp_server.parse_args(["--model", "/m.gguf", *sample_args(flag)])
    params = xllamacpp_server.build_params(args)
    *parents, attribute = flag.target.lstrip("!").split(".")
    owner = params
    for parent in parents:
        owner = getattr(owner, parent)
    value = getattr(owner, attribute)
    default = getattr(xllamacpp.CommonParams() if not parents else getattr(xllamacpp.CommonParams(), parents[0]),
                      attribute)
    if flag.kind == "bool":
        assert value is (not flag.target.startswith("!")), (flag.name, value)
    elif flag.kind == "choice":
        enum_type, members = llamacpp_flags.ENUMS[flag.target]
        assert value == getattr(getattr(xllamacpp, enum_type), members[flag.choices[-1]])
    elif flag.kind == "floats":
        assert list(value[:3]) == [3.0, 1.0, 0.0]
    else:
        assert value == pytest.approx(float(SAMPLE[flag.kind])), (flag.name, value, default)


def test_the_launcher_keeps_berths_flags_and_threads_batch_follows_threads():
    args = xllamacpp_server.parse_args(
        ["-t", "3", "--model", "/m.gguf", "--host", "127.0.0.1", "--port", "9", "--ctx-size", "512", "--alias", "a"]
    )
    params = xllamacpp_server.build_params(args)
    assert (params.cpuparams.n_threads, params.cpuparams_batch.n_threads) == (3, 3)
    assert (params.model.path, params.hostnames, params.port, params.n_ctx, params.model_alias) == (
        "/m.gguf", ["127.0.0.1"], 9, 512, {"a"}
    )


def test_the_launcher_exits_2_naming_a_flag_it_cannot_map():
    done = subprocess.run(
        [sys.executable, "-m", "berth.engines.xllamacpp_server", "--model", "/m.gguf", "--frobnicate", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--frobnicate" in done.stderr and "--parallel" in done.stderr


def test_tables_hold_each_spelling_once_and_accept_no_owned_flag():
    for table in TABLES.values():
        accepted = {spelling for flag in table.flags for spelling in (*flag.names, *flag.negation)}
        assert not accepted & {"--host", "--port", "--model", "-m", "--api-key"}, table.engine
