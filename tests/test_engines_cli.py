"""`berth engines [MODEL]` and GET /v1/engines: the hardware, the engines and why, and which engine
a model gets (or why none can serve it). The CLI runs as a user runs it, with the stack's env."""

import json
import os
import subprocess
import sys

import pytest

from berth.api.cli_output import engines_text
from berth.api.routes_engines import engines_report
from berth.domain.hardware import Gpu, Hardware
from berth.testing.harness import free_port

LLAMACPP_REASON = "gguf models go to llamacpp here"
BIN_REFUSAL = "no engine serves PyTorch .bin weights files"


def berth(stack, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`berth ARGS...` as a user runs it, with the stack's environment (plus `env`)."""
    return subprocess.run(
        [sys.executable, "-m", "berth.api.cli", *args],
        env={**(stack.env if stack else os.environ), **(env or {})},
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )


@pytest.fixture
def bin_model(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\0" * 64)
    return path


def test_help_explains_it_with_an_example():
    result = berth(None, "engines", "--help")
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout and "GET /v1/engines" in result.stdout


def test_a_gguf_gets_llamacpp_with_the_reasons_from_the_api(stack, tiny_gguf):
    result = berth(stack, "engines", str(tiny_gguf))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"hardware of the machine of the berth API at {stack.api_url}" in out
    for fact in ("os ", "cpu ", "memory ", "docker ", "ENGINE", "llamacpp", "vllm", "mlx"):
        assert fact in out, (fact, out)
    assert f"model {tiny_gguf} (gguf" in out
    engine_line = next(line for line in out.splitlines() if line.strip().startswith("engine "))
    assert engine_line.split() == ["engine", "llamacpp"]
    assert LLAMACPP_REASON in out


def test_a_bin_is_refused_with_what_to_do_and_exit_1(stack, bin_model):
    result = berth(stack, "engines", str(bin_model))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refused" in result.stdout and BIN_REFUSAL in result.stdout
    assert "convert the model to GGUF" in result.stdout
    assert "Traceback" not in result.stderr


def test_without_a_model_it_lists_hardware_and_engines_and_exits_0(stack):
    result = berth(stack, "engines")
    assert result.returncode == 0, result.stderr
    assert "engines" in result.stdout and "SERVES MODEL" not in result.stdout and "refused" not in result.stdout


def test_with_no_api_it_computes_the_same_here_and_says_so(stack, tiny_gguf, bin_model):
    no_api = {"BERTH_API_PORT": str(free_port())}
    here = berth(stack, "engines", str(tiny_gguf), "--json", env=no_api)
    there = berth(stack, "engines", str(tiny_gguf), "--json")
    assert here.returncode == 0 and there.returncode == 0, here.stderr + there.stderr
    local, remote = json.loads(here.stdout), json.loads(there.stdout)
    assert local["engines"] == remote["engines"] and local["model"] == remote["model"]
    assert local["selection"]["engine"] == remote["selection"]["engine"] == "llamacpp"
    assert local["selection"]["reasons"][:2] == remote["selection"]["reasons"][:2]
    same = ("os", "arch", "cpu_cores", "ram_total", "gpus", "docker_available", "xllamacpp_installed")
    assert {k: local["hardware"][k] for k in same} == {k: remote["hardware"][k] for k in same}

    text = berth(stack, "engines", str(bin_model), env=no_api)
    assert text.returncode == 1 and BIN_REFUSAL in text.stdout
    assert "computed here: no berth API answers at" in text.stdout

    asked = berth(stack, "engines", "--local", str(tiny_gguf))  # an API answers, and is not asked
    assert asked.returncode == 0 and "hardware of this machine (computed here, as asked)" in asked.stdout


def test_a_preset_and_an_unknown_name_without_any_stack(tmp_path):
    env = {"BERTH_HOME": str(tmp_path / "home"), "BERTH_API_PORT": str(free_port())}
    preset = berth(None, "engines", "gemma3-270m", env=env)
    assert preset.returncode == 0, preset.stdout + preset.stderr
    assert "preset gemma3-270m" in preset.stdout and LLAMACPP_REASON in preset.stdout
    unknown = berth(None, "engines", "gemma9-1b", env=env)
    assert unknown.returncode == 1
    assert "'gemma9-1b' is neither a model file on this node nor a berth preset" in unknown.stdout


def test_the_api_route_answers_the_documented_shape(stack, api, tiny_gguf, bin_model):
    response = api.get("/v1/engines", params={"model": str(tiny_gguf)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"hardware", "engines", "model", "selection"}
    for key in ("os", "arch", "cpu_cores", "ram_total", "ram_available", "gpus", "driver_version",
                "cuda_version", "apple_silicon", "docker_available", "notes"):
        assert key in body["hardware"], key
    assert {e["name"] for e in body["engines"]} == {"llamacpp", "vllm", "mlx"}
    for engine in body["engines"]:
        assert {"name", "formats", "available", "why"} <= set(engine) and engine["why"]
    llamacpp = next(e for e in body["engines"] if e["name"] == "llamacpp")
    assert llamacpp["formats"] == ["gguf"] and llamacpp["available"] and llamacpp["serves_model"]
    assert body["model"] == {
        "reference": str(tiny_gguf), "format": "gguf", "size_bytes": tiny_gguf.stat().st_size,
        "found": True, "preset": None,
    }
    assert body["selection"]["engine"] == "llamacpp" and LLAMACPP_REASON in body["selection"]["reasons"]

    refused = api.get("/v1/engines", params={"model": str(bin_model)}).json()["selection"]
    assert set(refused) == {"refused"} and BIN_REFUSAL in refused["refused"]
    forced = api.get("/v1/engines", params={"model": str(tiny_gguf), "engine": "vllm"}).json()["selection"]
    assert "engine 'vllm' does not serve gguf models" in forced["refused"]
    bare = api.get("/v1/engines").json()
    assert bare["model"] is None and bare["selection"] is None

    bad = api.get("/v1/engines", params={"engine": "tensorrt"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    anonymous = api.get("/v1/engines", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"


def test_the_report_on_a_gpu_node_chooses_vllm_for_safetensors(tmp_path):
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 128)
    (folder / "config.json").write_text("{}")
    gpu_node = Hardware(
        os="Linux", arch="x86_64", cpu_cores=16, ram_total=128 * 2**30, ram_available=120 * 2**30,
        gpus=[Gpu(index=0, name="NVIDIA H200", memory_total=141 * 2**30, memory_free=140 * 2**30)],
        driver_version="570.86.15", cuda_version="12.8", docker_available=True,
    )
    report = engines_report(str(folder), hardware=gpu_node)
    assert report.selection.engine == "vllm"
    vllm = next(e for e in report.engines if e.name == "vllm")
    assert vllm.available and "NVIDIA H200" in vllm.why and vllm.serves_model
    text = engines_text(report.model_dump(mode="json"), "a test node")
    assert "0: NVIDIA H200 (141 GiB, 140 GiB free)" in text and "NVIDIA 570.86.15, CUDA 12.8" in text
