"""Log classification: every fixture block classifies to its expected code, and the exit rules hold."""

from __future__ import annotations

import re
import signal as signal_module
from dataclasses import dataclass
from pathlib import Path

import pytest

from berth.domain.diagnostics import (
    COMMON_PATTERNS,
    LogPattern,
    classify_exit,
    classify_log,
    mark_lines,
)
from berth.domain.errors import ErrorCode

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
ENGINES = ("llamacpp", "vllm", "mlx")
HEADER = re.compile(r"^### EXPECT (\S+)(.*?)(?:\s+--\s+(.*))?$")


@dataclass(frozen=True)
class Block:
    id: str
    expect: ErrorCode | None  # None: no pattern matches
    lines: list[str]
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    note: str = ""

    @property
    def has_exit_facts(self) -> bool:
        return self.exit_code is not None or self.signal is not None or self.oom_killed


def _parse(engine: str) -> list[Block]:
    blocks: list[Block] = []
    header: re.Match[str] | None = None
    lines: list[str] = []

    def flush() -> None:
        if header is None:
            return
        code, options, note = header.group(1), header.group(2).split(), header.group(3) or ""
        facts = dict(option.split("=", 1) for option in options if "=" in option)
        flags = {option for option in options if "=" not in option}
        assert set(facts) <= {"exit", "signal"} and flags <= {"oom_killed"}, f"{engine}: bad header options {options}"
        while lines and not lines[-1].strip():
            lines.pop()
        blocks.append(
            Block(
                id=f"{engine}-{len(blocks) + 1}",
                expect=None if code == "NONE" else ErrorCode(code),
                lines=list(lines),
                exit_code=int(facts["exit"]) if "exit" in facts else None,
                signal=int(facts["signal"]) if "signal" in facts else None,
                oom_killed="oom_killed" in options,
                note=note,
            )
        )

    for line in (FIXTURES / f"{engine}.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("### EXPECT "):
            flush()
            header = HEADER.match(line)
            assert header, f"{engine}: bad header {line!r}"
            lines = []
        elif header is not None:  # lines before the first header are the file's preamble
            lines.append(line)
    flush()
    return blocks


BLOCKS = [block for engine in ENGINES for block in _parse(engine)]
LOG_BLOCKS = [b for b in BLOCKS if not b.has_exit_facts]
EXIT_BLOCKS = [b for b in BLOCKS if b.has_exit_facts]


def _ids(blocks: list[Block]) -> list[str]:
    return [b.id for b in blocks]


# --- the fixtures themselves -------------------------------------------------------------


def test_every_engine_has_blocks_and_a_healthy_one():
    for engine in ENGINES:
        blocks = [b for b in BLOCKS if b.id.startswith(f"{engine}-")]
        assert len(blocks) >= 8, engine
        assert any(b.expect is None for b in blocks), f"{engine} has no EXPECT NONE block"
        assert all(len(b.lines) >= 1 for b in blocks)


def test_fixtures_cover_every_log_code():
    log_codes = {b.expect for b in LOG_BLOCKS}
    assert {ErrorCode.OOM, ErrorCode.CUDA_ERROR, ErrorCode.MODEL_LOADING_FAILURE, ErrorCode.RUNTIME_ERROR, None} <= log_codes
    exit_codes = {b.expect for b in EXIT_BLOCKS}
    assert {ErrorCode.OOM, ErrorCode.CONTAINER_EXITED} <= exit_codes


@pytest.mark.parametrize("pattern", COMMON_PATTERNS, ids=lambda p: f"{p.code.value}:{p.description}")
def test_every_common_pattern_is_exercised_by_a_fixture(pattern: LogPattern):
    assert any(pattern.matches(line) for block in BLOCKS for line in block.lines), (
        f"no fixture line shows {pattern.description!r} ({pattern.regex.pattern})"
    )


def test_some_oom_blocks_end_in_a_generic_traceback_or_error():
    """The OOM proof must win over the generic RuntimeError/Traceback lines around it."""
    generic_after_oom = 0
    for block in LOG_BLOCKS:
        if block.expect is not ErrorCode.OOM:
            continue
        marked = mark_lines(block.lines)
        codes = [m.code for m in marked]
        if ErrorCode.RUNTIME_ERROR in codes:
            generic_after_oom += 1
    assert generic_after_oom >= 3


# --- classify_log over the fixtures ------------------------------------------------------


@pytest.mark.parametrize("block", LOG_BLOCKS, ids=_ids(LOG_BLOCKS))
def test_fixture_block_classifies_to_expected_code(block: Block):
    diagnosis = classify_log(block.lines)
    if block.expect is None:
        assert diagnosis is None, f"noise matched: {[m.text for m in mark_lines(block.lines)]}"
        return
    assert diagnosis is not None, "nothing matched"
    assert diagnosis.code is block.expect, (diagnosis.primary.text, diagnosis.primary.description)
    # The primary line is one of the block's lines, at its index, and carries the winning code.
    assert block.lines[diagnosis.primary.index] == diagnosis.primary.text
    assert diagnosis.primary.code is block.expect
    assert diagnosis.primary in diagnosis.matched
    # Nothing that matched is more specific than the primary line.
    assert all(m.specificity <= diagnosis.primary.specificity for m in diagnosis.matched)


@pytest.mark.parametrize("block", EXIT_BLOCKS, ids=_ids(EXIT_BLOCKS))
def test_fixture_block_with_exit_facts(block: Block):
    assert classify_log(block.lines) is None, "exit-fact blocks must show nothing a pattern matches"
    failure = classify_exit(block.lines, block.exit_code, block.signal, oom_killed=block.oom_killed)
    assert failure.code is block.expect
    assert failure.exit_code == block.exit_code and failure.signal == block.signal
    assert failure.log_lines == block.lines[-20:]


@pytest.mark.parametrize("block", [b for b in LOG_BLOCKS if b.expect], ids=_ids([b for b in LOG_BLOCKS if b.expect]))
def test_log_pattern_beats_exit_info(block: Block):
    primary = classify_log(block.lines).primary
    for exit_code, sig, ended in (
        (1, None, "exited with status 1: "),
        (137, None, "exited with status 137 (signal 9, SIGKILL): "),
        (None, signal_module.SIGKILL, "was killed by signal 9 (SIGKILL): "),
    ):
        failure = classify_exit(block.lines, exit_code, sig)
        assert failure.code is block.expect
        assert failure.message.startswith("The engine " + ended)
        assert primary.text in failure.log_lines
        # The evidence is the primary line, less its log prefix.
        evidence = failure.message.removeprefix("The engine " + ended).removesuffix("...")
        assert evidence and evidence in primary.text


# --- classify_log rules ------------------------------------------------------------------


def test_no_lines_and_blank_lines_give_none():
    assert classify_log([]) is None
    assert classify_log(["", "   ", "\n"]) is None


def test_oom_beats_a_generic_cuda_error_on_the_same_line():
    diagnosis = classify_log(["RuntimeError: CUDA error: out of memory"])
    assert diagnosis.code is ErrorCode.OOM


def test_oom_beats_a_later_cuda_error_line():
    lines = [
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 900.00 MiB on device 0: cudaMalloc failed: out of memory",
        "/src/ggml-cuda.cu:84: CUDA error",
    ]
    diagnosis = classify_log(lines)
    assert diagnosis.code is ErrorCode.OOM
    assert diagnosis.primary.index == 0


def test_cuda_error_beats_loading_failure_and_runtime_error():
    lines = [
        "llama_model_load: error loading model: foo",
        "CUDA error: an illegal memory access was encountered",
        "Traceback (most recent call last):",
        "RuntimeError: boom",
    ]
    assert classify_log(lines).code is ErrorCode.CUDA_ERROR


def test_loading_failure_beats_runtime_error():
    lines = ["Traceback (most recent call last):", "FileNotFoundError: [Errno 2] No such file or directory: '/m/config.json'", "RuntimeError: x"]
    diagnosis = classify_log(lines)
    assert diagnosis.code is ErrorCode.MODEL_LOADING_FAILURE
    assert diagnosis.primary.index == 1


def test_generic_error_alone_is_runtime_error():
    assert classify_log(["Traceback (most recent call last):"]).code is ErrorCode.RUNTIME_ERROR
    assert classify_log(["KeyError: 'rope_type'"]).code is ErrorCode.RUNTIME_ERROR
    assert classify_log(["RuntimeError: something"]).code is ErrorCode.RUNTIME_ERROR


def test_equal_specificity_prefers_the_last_occurrence():
    lines = ["ValueError: first", "noise", "TypeError: second", "more noise"]
    diagnosis = classify_log(lines)
    assert diagnosis.primary.index == 2
    assert diagnosis.primary.text == "TypeError: second"


def test_llamacpp_cuda_init_warning_loses_to_a_load_failure():
    lines = [
        "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
        "llama_model_load: error loading model: llama_model_loader: failed to load model from /m.gguf",
    ]
    assert classify_log(lines).code is ErrorCode.MODEL_LOADING_FAILURE
    assert classify_log(lines[:1]).code is ErrorCode.CUDA_ERROR


def test_vllm_advice_about_running_out_of_memory_is_not_an_oom():
    line = "INFO 09-12 08:14:53 [model_runner.py:1450] CUDA graphs can take additional 1~3 GiB memory per GPU. If you are running out of memory, consider decreasing `gpu_memory_utilization` or enforcing eager mode."
    assert classify_log([line]) is None


def test_suggested_context_size_from_vllm_messages():
    v1 = next(b for b in LOG_BLOCKS if any("estimated maximum model length is 32768" in l for l in b.lines))
    v0 = next(b for b in LOG_BLOCKS if any("stored in KV cache (7344)" in l for l in b.lines))
    assert classify_log(v1.lines).suggested_context_size == 32768
    assert classify_log(v0.lines).suggested_context_size == 7344
    other_oom = next(b for b in LOG_BLOCKS if b.id.startswith("llamacpp-") and b.expect is ErrorCode.OOM)
    assert classify_log(other_oom.lines).suggested_context_size is None


def test_extra_patterns_extend_the_table():
    engine_pattern = LogPattern(
        ErrorCode.CUDA_ERROR, re.compile(r"hipErrorNoBinaryForGpu", re.I), 70, "ROCm: no binary for this GPU"
    )
    lines = ["starting", "hipErrorNoBinaryForGpu: Unable to find code object for all current devices!"]
    assert classify_log(lines) is None
    diagnosis = classify_log(lines, extra_patterns=[engine_pattern])
    assert diagnosis.code is ErrorCode.CUDA_ERROR
    assert diagnosis.primary.description == "ROCm: no binary for this GPU"


def test_extra_pattern_wins_a_tie_on_the_same_line():
    mine = LogPattern(ErrorCode.RUNTIME_ERROR, re.compile("CUDA error"), 65, "mine")
    diagnosis = classify_log(["CUDA error: whatever"], extra_patterns=[mine])
    assert diagnosis.primary.description == "mine"
    assert diagnosis.code is ErrorCode.RUNTIME_ERROR


# --- mark_lines ---------------------------------------------------------------------------


def test_mark_lines_marks_exactly_the_failure_lines():
    lines = [
        "main: loading model",  # 0
        "load_tensors: loading model tensors, this can take a while... (mmap = true)",  # 1
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 39870.52 MiB on device 0: cudaMalloc failed: out of memory",  # 2
        "alloc_tensor_range: failed to allocate CUDA0 buffer of size 41807183872",  # 3
        "llama_model_load: error loading model: unable to allocate CUDA0 buffer",  # 4
        "llama_model_load_from_file_impl: failed to load model",  # 5
        "srv    operator(): operator(): cleaning up before exit...",  # 6
        "Traceback (most recent call last):",  # 7
    ]
    marked = mark_lines(lines)
    assert [(m.index, m.code) for m in marked] == [
        (2, ErrorCode.OOM),
        (3, ErrorCode.OOM),
        (4, ErrorCode.OOM),  # a load error whose reason is an allocation: OOM on that line
        (5, ErrorCode.MODEL_LOADING_FAILURE),
        (7, ErrorCode.RUNTIME_ERROR),
    ]
    assert all(m.text == lines[m.index] for m in marked)
    assert all(m.description for m in marked)


def test_mark_lines_strips_newlines_and_marks_nothing_in_noise():
    assert mark_lines(["CUDA error: an illegal memory access was encountered\n"])[0].text.endswith("encountered")
    healthy = next(b for b in BLOCKS if b.id.startswith("vllm-") and b.expect is None)
    assert mark_lines(healthy.lines) == []


# --- classify_exit ------------------------------------------------------------------------

NOISE = ["main: loading model", "load_tensors: loading model tensors, this can take a while... (mmap = true)"]


def test_exit_1_without_pattern_is_container_exited():
    failure = classify_exit(NOISE, exit_code=1, signal=None)
    assert failure.code is ErrorCode.CONTAINER_EXITED
    assert "exited with status 1" in failure.message
    assert NOISE[-1] in failure.message  # the last line is named as the evidence
    assert failure.log_lines == NOISE
    assert failure.exit_code == 1 and failure.signal is None


def test_sigkill_without_evidence_is_container_exited():
    failure = classify_exit(NOISE, exit_code=None, signal=signal_module.SIGKILL)
    assert failure.code is ErrorCode.CONTAINER_EXITED
    assert "killed by signal 9 (SIGKILL)" in failure.message
    assert "killed it" in failure.message and "out-of-memory" in failure.message
    assert failure.signal == 9


def test_exit_137_without_evidence_is_container_exited():
    failure = classify_exit(NOISE, exit_code=137, signal=None)
    assert failure.code is ErrorCode.CONTAINER_EXITED
    assert "137" in failure.message and "SIGKILL" in failure.message


def test_sigkill_with_oom_killer_is_oom():
    failure = classify_exit(NOISE, exit_code=None, signal=signal_module.SIGKILL, oom_killed=True)
    assert failure.code is ErrorCode.OOM
    assert "out-of-memory killer" in failure.message
    assert failure.log_lines == NOISE


def test_exit_137_with_oom_killer_is_oom():
    assert classify_exit(NOISE, exit_code=137, signal=None, oom_killed=True).code is ErrorCode.OOM


def test_oom_killer_outranks_a_generic_traceback_but_not_a_specific_pattern():
    generic = ["Traceback (most recent call last):", "RuntimeError: Engine core initialization failed."]
    assert classify_exit(generic, 1, None).code is ErrorCode.RUNTIME_ERROR
    assert classify_exit(generic, 1, None, oom_killed=True).code is ErrorCode.OOM
    specific = ["llama_model_load: error loading model: unknown model architecture: 'x'"]
    assert classify_exit(specific, 137, None, oom_killed=True).code is ErrorCode.MODEL_LOADING_FAILURE


def test_log_pattern_beats_exit_info_and_names_the_line():
    lines = NOISE + ["llama_model_load: error loading model: error loading model architecture: unknown model architecture: 'newarch9'"]
    failure = classify_exit(lines, exit_code=1, signal=None)
    assert failure.code is ErrorCode.MODEL_LOADING_FAILURE
    assert failure.message == (
        "The engine exited with status 1: llama_model_load: error loading model: "
        "error loading model architecture: unknown model architecture: 'newarch9'"
    )
    assert failure.log_lines == [lines[-1]]
    killed = classify_exit(lines, exit_code=None, signal=signal_module.SIGKILL)
    assert killed.code is ErrorCode.MODEL_LOADING_FAILURE
    assert killed.message.startswith("The engine was killed by signal 9 (SIGKILL): llama_model_load")


def test_message_strips_vllm_prefixes_and_is_one_line():
    block = next(b for b in LOG_BLOCKS if any("No available memory for the cache blocks" in l for l in b.lines))
    failure = classify_exit(block.lines, exit_code=1, signal=None)
    assert failure.code is ErrorCode.OOM
    assert failure.message.startswith("The engine exited with status 1: ValueError: No available memory")
    assert "\n" not in failure.message and "engine.py:366]" not in failure.message


def test_long_evidence_is_shortened():
    failure = classify_exit(["RuntimeError: " + "x" * 2000], exit_code=1, signal=None)
    assert len(failure.message) < 400 and failure.message.endswith("...")


def test_long_evidence_keeps_the_words_that_matched():
    line = "RuntimeError: Unexpected error from cudaGetDeviceCount(). " + "blah " * 100 + "Error 35: CUDA driver version is insufficient for CUDA runtime version"
    failure = classify_exit([line], exit_code=1, signal=None)
    assert failure.code is ErrorCode.CUDA_ERROR
    assert len(failure.message) < 400
    assert "CUDA driver version is insufficient for CUDA runtime version" in failure.message


def test_llamacpp_abort_names_the_assertion_not_the_abort():
    block = next(b for b in LOG_BLOCKS if any("GGML_ASSERT" in l for l in b.lines))
    diagnosis = classify_log(block.lines)
    assert diagnosis.code is ErrorCode.RUNTIME_ERROR
    assert "GGML_ASSERT" in diagnosis.primary.text
    thrown = next(b for b in LOG_BLOCKS if any("what():  Unknown filter" in l for l in b.lines))
    assert "Unknown filter" in classify_log(thrown.lines).primary.text


def test_no_exit_facts_with_a_pattern_describes_the_finding():
    failure = classify_exit(["CUDA error: an illegal memory access was encountered"], None, None)
    assert failure.code is ErrorCode.CUDA_ERROR
    assert failure.message.startswith("The engine log shows CUDA: illegal memory access: CUDA error")


def test_no_match_keeps_the_last_twenty_lines():
    lines = [f"line {i}" for i in range(50)] + ["", ""]
    failure = classify_exit(lines, exit_code=2, signal=None)
    assert failure.code is ErrorCode.CONTAINER_EXITED
    assert failure.log_lines == [f"line {i}" for i in range(30, 50)]
    assert "line 49" in failure.message


def test_matched_lines_are_capped_but_keep_the_primary():
    lines = ["Traceback (most recent call last):"] * 100 + ["torch.OutOfMemoryError: CUDA out of memory."] + ["RuntimeError: x"] * 100
    failure = classify_exit(lines, exit_code=1, signal=None)
    assert failure.code is ErrorCode.OOM
    assert len(failure.log_lines) == 40
    assert "torch.OutOfMemoryError: CUDA out of memory." in failure.log_lines


def test_other_endings_read_plainly():
    assert "killed by signal 15 (SIGTERM)" in classify_exit([], None, signal_module.SIGTERM).message
    assert "status 139 (signal 11, SIGSEGV)" in classify_exit(["x"], 139, None).message
    assert "wrote no log" in classify_exit([], 3, None).message
    clean_exit = classify_exit(["bye"], 0, None)
    assert clean_exit.code is ErrorCode.CONTAINER_EXITED and "without reporting an error" in clean_exit.message
