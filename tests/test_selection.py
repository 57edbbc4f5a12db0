"""Engine selection: a table over (OS, chip, GPUs, Docker, installed runtimes, format, override)."""

from dataclasses import dataclass

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from berth.activities.files import prepare_files
from berth.node.hardware import clear_hardware_cache
from berth.node.engine_choice import choose_engine
from berth.domain.errors import ErrorCode, Failure
from berth.domain.hardware import AppleSilicon, Gpu, Hardware
from berth.domain.pipeline import PrepareFilesInput
from berth.engines.registry import ENGINES
from berth.engines.selection import SelectionRefused, assess_engines, select_engine

GIB = 2**30
# The three engines as the issue defines them, independent of what is registered at the moment.
CATALOG = {
    "llamacpp": frozenset({"gguf"}),
    "vllm": frozenset({"safetensors"}),
    "mlx": frozenset({"safetensors"}),
}


def node(
    os: str = "Linux",
    arch: str = "x86_64",
    chip: str | None = None,
    gpus: int = 0,
    docker: bool = False,
    mlx: bool = False,
    vllm: bool = False,
    llama: bool = True,
) -> Hardware:
    return Hardware(
        os=os,
        arch=arch,
        cpu_cores=8,
        ram_total=32 * GIB,
        ram_available=24 * GIB,
        gpus=[
            Gpu(index=i, name="NVIDIA H200", memory_total=141 * GIB, memory_free=140 * GIB) for i in range(gpus)
        ],
        driver_version="550.54.15" if gpus else None,
        cuda_version="12.4" if gpus else None,
        apple_silicon=AppleSilicon(chip=chip, unified_memory=32 * GIB) if chip else None,
        docker_available=docker,
        mlx_lm_installed=mlx,
        vllm_installed=vllm,
        xllamacpp_installed=llama,
    )


MAC = dict(os="Darwin", arch="arm64", chip="Apple M2 Pro")
INTEL_MAC = dict(os="Darwin", arch="x86_64")
LINUX = dict(os="Linux", arch="x86_64")
LINUX_GPU = dict(os="Linux", arch="x86_64", gpus=1)
WINDOWS = dict(os="Windows", arch="AMD64")


@dataclass(frozen=True)
class Case:
    id: str
    hardware: dict
    format: str | None
    override: str
    expect: str  # an engine name, or "refused: <fragment of the message>"


CASES = [
    # --- auto: gguf goes to llama.cpp everywhere ------------------------------------------
    Case("mac-gguf", {**MAC, "mlx": True}, "gguf", "auto", "llamacpp"),
    Case("linux-gpu-docker-gguf", {**LINUX_GPU, "gpus": 2, "docker": True}, "gguf", "auto", "llamacpp"),
    Case("linux-cpu-gguf", LINUX, "gguf", "auto", "llamacpp"),
    Case("windows-gguf", WINDOWS, "gguf", "auto", "llamacpp"),
    Case("gguf-llama-in-docker-only", {**LINUX, "llama": False, "docker": True}, "gguf", "auto", "llamacpp"),
    Case("gguf-no-llama-anywhere", {**LINUX, "llama": False}, "gguf", "auto", "refused: pip install xllamacpp"),
    # --- auto: safetensors by platform -----------------------------------------------------
    Case("mac-safetensors-mlx", {**MAC, "mlx": True}, "safetensors", "auto", "mlx"),
    Case("mac-safetensors-docker-still-mlx", {**MAC, "mlx": True, "docker": True}, "safetensors", "auto", "mlx"),
    Case("mac-safetensors-no-mlx", MAC, "safetensors", "auto", "refused: pip install mlx-lm"),
    Case("mac-safetensors-no-mlx-gguf-hint", MAC, "safetensors", "auto", "refused: convert_hf_to_gguf"),
    Case("intel-mac-safetensors", INTEL_MAC, "safetensors", "auto", "refused: Apple silicon"),
    Case("linux-gpu-docker-safetensors", {**LINUX_GPU, "docker": True}, "safetensors", "auto", "vllm"),
    Case("linux-2gpu-docker-safetensors", {**LINUX_GPU, "gpus": 2, "docker": True}, "safetensors", "auto", "vllm"),
    Case("linux-gpu-native-vllm", {**LINUX_GPU, "vllm": True}, "safetensors", "auto", "vllm"),
    Case("arm-linux-gpu-docker", {**LINUX_GPU, "arch": "aarch64", "docker": True}, "safetensors", "auto", "vllm"),
    Case(
        "linux-gpu-no-docker-no-vllm",
        {**LINUX_GPU, "mlx": True},  # MLX is installed but not picked beside an idle GPU
        "safetensors",
        "auto",
        "refused: NVIDIA Container Toolkit",
    ),
    Case("linux-cpu-mlx-installed", {**LINUX, "mlx": True}, "safetensors", "auto", "mlx"),
    Case("linux-cpu-docker-no-mlx", {**LINUX, "docker": True}, "safetensors", "auto", "refused: vLLM needs an NVIDIA GPU"),
    Case("linux-cpu-nothing", LINUX, "safetensors", "auto", "refused: convert_hf_to_gguf"),
    Case("linux-cpu-nothing-names-mlx-extra", LINUX, "safetensors", "auto", "refused: pip install 'berth[mlx]'"),
    Case("windows-safetensors", WINDOWS, "safetensors", "auto", "refused: no engine on this node serves safetensors"),
    # --- formats no engine serves -------------------------------------------------------------
    Case("bin", {**LINUX_GPU, "docker": True}, "unsupported:PyTorch .bin weights", "auto", "refused: PyTorch .bin weights"),
    Case("pt", MAC, "unsupported:PyTorch checkpoint", "auto", "refused: convert the model to GGUF"),
    Case("onnx", LINUX, "unsupported:ONNX", "auto", "refused: no engine serves ONNX"),
    Case("onnx-forced", LINUX, "unsupported:ONNX", "llamacpp", "refused: no engine serves ONNX"),
    Case("unknown-format", LINUX, None, "auto", "refused: cannot tell the model's format"),
    # --- overrides win when they can run here ---------------------------------------------------
    Case("force-mlx-on-linux-cpu", {**LINUX, "mlx": True}, "safetensors", "mlx", "mlx"),
    Case("force-mlx-beside-gpu", {**LINUX_GPU, "docker": True, "mlx": True}, "safetensors", "mlx", "mlx"),
    Case("force-llamacpp-gpu-node", {**LINUX_GPU, "docker": True}, "gguf", "llamacpp", "llamacpp"),
    Case("force-vllm-native", {**LINUX_GPU, "vllm": True, "mlx": True}, "safetensors", "vllm", "vllm"),
    # --- ... and are refused with the reason when they cannot ------------------------------------
    Case("force-vllm-no-gpu", {**LINUX, "docker": True, "vllm": True}, "safetensors", "vllm", "refused: needs an NVIDIA GPU"),
    Case("force-vllm-on-mac", {**MAC, "docker": True, "mlx": True}, "safetensors", "vllm", "refused: Apple M2 Pro"),
    Case("force-vllm-no-docker", LINUX_GPU, "safetensors", "vllm", "refused: vLLM needs Docker"),
    Case("force-vllm-gguf", {**LINUX_GPU, "docker": True}, "gguf", "vllm", "refused: does not serve gguf models"),
    Case("force-vllm-gguf-names-llamacpp", {**LINUX_GPU, "docker": True}, "gguf", "vllm", "refused: use llamacpp"),
    Case("force-mlx-not-installed-mac", MAC, "safetensors", "mlx", "refused: pip install mlx-lm"),
    Case("force-mlx-not-installed-linux", {**LINUX_GPU, "docker": True}, "safetensors", "mlx", "refused: MLX is not installed"),
    Case("force-mlx-not-installed-linux-extra", LINUX, "safetensors", "mlx", "refused: pip install 'berth[mlx]'"),
    Case("force-mlx-gguf", {**MAC, "mlx": True}, "gguf", "mlx", "refused: does not serve gguf"),
    Case("force-llamacpp-safetensors", {**MAC, "mlx": True}, "safetensors", "llamacpp", "refused: convert_hf_to_gguf"),
    Case("force-llamacpp-not-installed", {**LINUX, "llama": False}, "gguf", "llamacpp", "refused: pip install xllamacpp"),
    Case("force-unknown-engine", LINUX, "gguf", "tgi", "refused: not available in this berth"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_selection_table(case: Case):
    hardware = node(**case.hardware)
    if case.expect.startswith("refused: "):
        with pytest.raises(SelectionRefused) as refused:
            select_engine(case.format, hardware, case.override, engines=CATALOG)
        assert case.expect.removeprefix("refused: ") in str(refused.value)
    else:
        chosen = select_engine(case.format, hardware, case.override, engines=CATALOG)
        assert chosen.engine == case.expect
        assert chosen.reasons, "a choice always says why"


def test_reasons_name_the_evidence():
    chosen = select_engine("safetensors", node(**LINUX_GPU, docker=True), model_bytes=3 * GIB, engines=CATALOG)
    text = "\n".join(chosen.reasons)
    assert "NVIDIA H200" in text and "Docker" in text and "3.0 GiB" in text
    forced = select_engine("safetensors", node(**LINUX, mlx=True), "mlx", engines=CATALOG)
    assert forced.reasons[0] == "engine 'mlx' was asked for"
    assert "CPU" in forced.reasons[1]


def test_every_refusal_says_what_to_do():
    """Each refusal names something to install, to convert, or another engine."""
    actions = ("pip install", "install", "convert", "use ", "known:", "name a .gguf", "check")
    for case in CASES:
        if case.expect.startswith("refused: "):
            with pytest.raises(SelectionRefused) as refused:
                select_engine(case.format, node(**case.hardware), case.override, engines=CATALOG)
            assert any(action in str(refused.value) for action in actions), (case.id, str(refused.value))


def test_assess_engines_lists_every_engine_with_why():
    rows = {row.engine: row for row in assess_engines("safetensors", node(**MAC, mlx=True), CATALOG)}
    assert rows["mlx"].usable
    assert not rows["vllm"].can_run and "NVIDIA GPU" in rows["vllm"].reason
    assert not rows["llamacpp"].serves_format and "gguf" in rows["llamacpp"].reason


def test_the_default_catalog_is_the_registry():
    for name in ENGINES:
        assert name in {"llamacpp", "vllm", "mlx"}, "an engine without a selection rule: add one"
    assert select_engine("gguf", node(**LINUX)).engine == "llamacpp"
    if "mlx" in ENGINES:
        # The MLX end-to-end test on this Linux machine relies on a forced MLX being accepted.
        assert select_engine("safetensors", node(**LINUX, mlx=True), "mlx").engine == "mlx"


# ---- the node's choice: the real probe of this node + the pure rule -------------------------------


@pytest.fixture(autouse=True)
def _fresh_probe():
    clear_hardware_cache()
    yield
    clear_hardware_cache()


async def _run(model: str, override: str = "auto"):
    return await choose_engine(model, override)


def _failure(error: ApplicationError) -> Failure:
    return Failure.model_validate(error.details[0])


async def test_choice_picks_llamacpp_for_a_gguf(tiny_gguf):
    choice = await _run(str(tiny_gguf))
    assert choice.engine == "llamacpp"
    assert any("node:" in reason for reason in choice.reasons)


async def test_choice_missing_path_is_a_loading_failure(tmp_path):
    # (a missing "x.gguf" is chosen by its name; prepare_files then says that it is missing)
    with pytest.raises(ApplicationError) as raised:
        await _run(str(tmp_path / "no-such-model"))
    assert raised.value.type == ErrorCode.MODEL_LOADING_FAILURE.value
    assert "does not exist" in _failure(raised.value).message


async def test_choice_refusal_is_engine_unavailable(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\0" * 16)
    with pytest.raises(ApplicationError) as raised:
        await _run(str(onnx))
    assert raised.value.type == ErrorCode.ENGINE_UNAVAILABLE.value
    assert "ONNX" in _failure(raised.value).message
    assert raised.value.non_retryable


async def test_choice_refuses_vllm_on_this_gpu_less_node(tmp_path):
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this node has an NVIDIA GPU")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}")
    with pytest.raises(ApplicationError) as raised:
        await _run(str(folder), "vllm")
    assert raised.value.type == ErrorCode.ENGINE_UNAVAILABLE.value
    assert "NVIDIA GPU" in _failure(raised.value).message


# ---- the same choice, made by prepare_files first (select-with-files-v1) ------------------------


async def _prepare(model: str, override: str = "auto", **fields):
    request = PrepareFilesInput(deployment="d", model=model, choose_engine=True, override=override, **fields)
    return await ActivityEnvironment().run(prepare_files, request)


async def test_prepare_files_chooses_the_engine_then_plans_the_memory_for_it(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTH_HOME", str(tmp_path / "home"))
    prepared = await _prepare(str(tiny_gguf), plan_memory=True)
    assert prepared.choice is not None and prepared.choice.engine == "llamacpp"
    assert prepared.choice == await _run(str(tiny_gguf)), "the same choice as the node makes on its own"
    assert prepared.path == str(tiny_gguf.resolve()) and prepared.format == "gguf"
    assert prepared.plan is not None and prepared.plan.context_size, "planned for the chosen engine"


async def test_prepare_files_refuses_before_fetching_anything(tmp_path, monkeypatch):
    """A remote model no engine here serves: ENGINE_UNAVAILABLE from its name, no download tried
    (the URL's port answers nothing: a fetch would have failed as a connection error instead)."""
    home = tmp_path / "home"
    monkeypatch.setenv("BERTH_HOME", str(home))
    with pytest.raises(ApplicationError) as raised:
        await _prepare("http://127.0.0.1:9/model.onnx")
    assert raised.value.type == ErrorCode.ENGINE_UNAVAILABLE.value
    assert "ONNX" in _failure(raised.value).message
    assert not list((home / "models").rglob("*.onnx*")), "nothing fetched"


async def test_prepare_files_without_choose_engine_leaves_the_choice_to_the_workflow(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTH_HOME", str(tmp_path / "home"))
    request = PrepareFilesInput(deployment="d", model=str(tiny_gguf), engine="llamacpp")
    prepared = await ActivityEnvironment().run(prepare_files, request)
    assert prepared.choice is None and prepared.plan is None
