"""Guidance texts: one per code, short, plain, and concrete where the facts allow."""

from __future__ import annotations

import re

import pytest

from berth.domain.errors import ErrorCode, Failure
from berth.domain.guidance import GuidanceFacts, guidance_for
from berth.domain.hardware import Hardware
from berth.node.engine_watch import with_gpu_driver

FULL = GuidanceFacts(
    deployment="qwen-chat",
    model="Qwen2.5-7B-Instruct",
    engine="vllm",
    context_size=32768,
    suggested_context_size=7344,
    startup_timeout_s=600,
    elapsed_s=612.4,
    driver_version="535.129.03",
    cuda_version="12.2",
    missing_files=["model-00001-of-00004.safetensors", "tokenizer.json"],
    exit_code=1,
    signal=None,
)


def _sentences(text: str) -> int:
    # Sentence ends: ". " / "; " are both fine inside; count terminal punctuation followed by space or end.
    return len(re.findall(r"[.!?](?:\s|$)(?![a-z0-9])", text))


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
@pytest.mark.parametrize("facts", [GuidanceFacts(), FULL], ids=["no-facts", "all-facts"])
def test_every_code_has_short_plain_guidance(code: ErrorCode, facts: GuidanceFacts):
    text = guidance_for(code, facts)
    assert text and text == text.strip()
    assert "\n" not in text
    assert 1 <= _sentences(text) <= 3, text
    assert len(text) <= 420, (len(text), text)
    assert "None" not in text  # no missing fact leaks into the words


def test_guidance_differs_per_code():
    texts = {code: guidance_for(code, FULL) for code in ErrorCode}
    assert len(set(texts.values())) == len(ErrorCode)


def test_every_current_code_has_its_own_guidance_not_the_fallback():
    for code in ErrorCode:
        assert code.value not in guidance_for(code, FULL), f"{code.value} falls back to the generic text"


def test_engine_unavailable_names_model_engine_and_formats():
    text = guidance_for(ErrorCode.ENGINE_UNAVAILABLE, GuidanceFacts(model="m.gguf", engine="vllm"))
    assert "m.gguf" in text and "vllm" in text and "GGUF" in text and "Apple silicon" in text


def test_facts_are_optional():
    assert guidance_for(ErrorCode.OOM) == guidance_for(ErrorCode.OOM, GuidanceFacts())


# --- OOM ----------------------------------------------------------------------------------


def test_names_are_kept_verbatim():
    for code in (ErrorCode.OOM, ErrorCode.MODEL_LOADING_FAILURE, ErrorCode.ENGINE_UNAVAILABLE):
        assert "Qwen2.5-7B-Instruct" in guidance_for(code, FULL), code


def test_oom_names_the_suggested_context_size():
    text = guidance_for(ErrorCode.OOM, GuidanceFacts(context_size=32768, suggested_context_size=7344))
    assert "context_size 7344" in text
    assert "32768" in text  # what did not fit


def test_oom_without_suggestion_halves_the_known_context():
    text = guidance_for(ErrorCode.OOM, GuidanceFacts(context_size=16384))
    assert "context_size 8192" in text
    assert "smaller variant" in text


def test_oom_without_any_context_suggests_a_smaller_variant_or_context():
    text = guidance_for(ErrorCode.OOM, GuidanceFacts(model="llama-3.3-70b"))
    assert "llama-3.3-70b" in text
    assert "smaller variant" in text and "quantisation" in text and "smaller context" in text
    assert not re.search(r"context_size \d", text)


# --- STARTUP_TIMEOUT -----------------------------------------------------------------------


def test_startup_timeout_names_the_budget_and_a_larger_one():
    text = guidance_for(ErrorCode.STARTUP_TIMEOUT, GuidanceFacts(startup_timeout_s=600, elapsed_s=612.4))
    assert "612 s" in text and "600 s" in text
    assert "1200 s" in text  # double the budget
    assert "smaller model" in text


def test_startup_timeout_with_budget_only():
    text = guidance_for(ErrorCode.STARTUP_TIMEOUT, GuidanceFacts(startup_timeout_s=90))
    assert "90 s" in text and "180 s" in text


def test_startup_timeout_without_facts_still_says_what_to_do():
    text = guidance_for(ErrorCode.STARTUP_TIMEOUT, GuidanceFacts())
    assert "longer startup timeout" in text and "smaller model" in text


# --- CUDA_ERROR ----------------------------------------------------------------------------


def test_cuda_error_names_versions_and_what_to_check():
    text = guidance_for(ErrorCode.CUDA_ERROR, GuidanceFacts(driver_version="535.129.03", cuda_version="12.2"))
    assert "driver 535.129.03" in text and "CUDA 12.2" in text
    assert "`nvidia-smi`" in text
    assert "NVIDIA Container Toolkit" in text
    assert "driver" in text


def test_cuda_error_without_versions_has_no_empty_parentheses():
    text = guidance_for(ErrorCode.CUDA_ERROR, GuidanceFacts())
    assert "()" not in text and "`nvidia-smi`" in text


# --- MODEL_LOADING_FAILURE -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "words"),
    [("llama.cpp", "GGUF"), ("llamacpp", "GGUF"), ("vllm", "config.json"), ("mlx", "MLX safetensors"), (None, "GGUF")],
)
def test_loading_failure_names_the_format_the_engine_needs(engine, words):
    text = guidance_for(ErrorCode.MODEL_LOADING_FAILURE, GuidanceFacts(engine=engine, model="m"))
    assert words in text
    assert "re-download" in text and "path" in text


def test_loading_failure_lists_missing_files():
    text = guidance_for(ErrorCode.MODEL_LOADING_FAILURE, GuidanceFacts(missing_files=["config.json"]))
    assert "Missing: config.json." in text


# --- CONTAINER_EXITED / RUNTIME_ERROR -------------------------------------------------------


def test_container_exited_points_at_the_logs_and_the_automatic_retries():
    text = guidance_for(ErrorCode.CONTAINER_EXITED, GuidanceFacts(exit_code=3))
    assert "exit status 3" in text
    assert "log lines" in text and "automatically" in text


def test_container_exited_by_sigkill_says_someone_killed_it():
    text = guidance_for(ErrorCode.CONTAINER_EXITED, GuidanceFacts(signal=9))
    assert "signal 9" in text and "killed it" in text
    assert "killed it" in guidance_for(ErrorCode.CONTAINER_EXITED, GuidanceFacts(exit_code=137))
    assert "killed it" not in guidance_for(ErrorCode.CONTAINER_EXITED, GuidanceFacts(exit_code=1))


def test_runtime_error_mentions_the_traceback_and_retries():
    text = guidance_for(ErrorCode.RUNTIME_ERROR, FULL)
    assert "traceback" in text and "automatically" in text


# --- MUST_REDOWNLOAD / TRANSIENT ------------------------------------------------------------


def test_must_redownload_names_the_files_and_the_command():
    text = guidance_for(ErrorCode.MUST_REDOWNLOAD, FULL)
    assert "model-00001-of-00004.safetensors" in text and "tokenizer.json" in text
    assert "`berth retry qwen-chat`" in text


def test_must_redownload_without_a_name_shows_a_placeholder():
    text = guidance_for(ErrorCode.MUST_REDOWNLOAD, GuidanceFacts())
    assert "`berth retry <deployment>`" in text


def test_transient_is_retried_automatically():
    text = guidance_for(ErrorCode.TRANSIENT, GuidanceFacts())
    assert "automatically" in text and "nothing to do" in text


def test_facts_are_a_frozen_pydantic_model_that_round_trips():
    data = FULL.model_dump()
    assert GuidanceFacts.model_validate(data) == FULL
    with pytest.raises(Exception):
        FULL.context_size = 1  # type: ignore[misc]


def test_a_cuda_error_carries_the_nodes_driver_and_cuda_versions_into_its_guidance():
    """The node stamps the versions its probe saw (NVML) on a CUDA_ERROR; the workflow passes them to
    the guidance. Other failures, and nodes without an NVIDIA driver, carry none."""
    gpu_node = Hardware(os="Linux", arch="x86_64", cpu_cores=8, ram_total=2**35, ram_available=2**34,
                        driver_version="550.54.15", cuda_version="12.4")
    cpu_node = gpu_node.model_copy(update={"driver_version": None, "cuda_version": None})
    cuda = Failure(code=ErrorCode.CUDA_ERROR, message="CUDA error: no kernel image is available")
    stamped = with_gpu_driver(cuda, gpu_node)
    assert (stamped.driver_version, stamped.cuda_version) == ("550.54.15", "12.4")
    assert with_gpu_driver(cuda, cpu_node) == cuda
    oom = Failure(code=ErrorCode.OOM, message="CUDA out of memory")
    assert with_gpu_driver(oom, gpu_node) == oom
    advice = guidance_for(ErrorCode.CUDA_ERROR, GuidanceFacts(engine="vllm", driver_version=stamped.driver_version,
                                                              cuda_version=stamped.cuda_version))
    assert "driver 550.54.15" in advice and "CUDA 12.4" in advice
