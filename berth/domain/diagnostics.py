"""Reading an engine's log: which lines prove what went wrong, and which ErrorCode that is.

A table of log patterns (`COMMON_PATTERNS`, plus whatever an engine adds) is matched line by
line. Every pattern has a specificity; the most specific match anywhere in the log decides the
code, and among equally specific matches the last one wins (the engine's final word). The
ranking, from most to least specific:

    OOM (90..80) > CUDA_ERROR (70..60) > MODEL_LOADING_FAILURE (55..40) > RUNTIME_ERROR (15..10)

so a generic traceback never hides the out-of-memory line above it, "CUDA error: out of memory"
is OOM, and "llama_model_load: error loading model: unable to allocate CUDA0 buffer" is OOM.

`classify_exit` adds what the process supervisor knows (exit status, signal, the OOM killer) and
returns the `Failure` that the workflow records. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import signal as _signal
from dataclasses import dataclass, field
from typing import Sequence

from .errors import ErrorCode, Failure

__all__ = [
    "COMMON_PATTERNS",
    "LogDiagnosis",
    "LogPattern",
    "MatchedLine",
    "classify_exit",
    "classify_log",
    "mark_lines",
]

# How many lines a Failure carries at most (it travels through Temporal's history).
MAX_FAILURE_LINES = 40
# How many trailing lines a Failure carries when no pattern matched.
TAIL_LINES = 20
# How much of the evidence line goes into a Failure's message.
MAX_EVIDENCE_CHARS = 300

_I = re.IGNORECASE


@dataclass(frozen=True)
class LogPattern:
    """One recognisable failure line: the code it proves, how specific that proof is."""

    code: ErrorCode
    regex: re.Pattern[str]
    specificity: int
    description: str

    def matches(self, line: str) -> bool:
        return self.regex.search(line) is not None


@dataclass(frozen=True)
class MatchedLine:
    """A log line that matched a pattern (the most specific one, where several did)."""

    index: int  # 0-based position in the lines given
    text: str
    code: ErrorCode
    description: str
    specificity: int


@dataclass(frozen=True)
class LogDiagnosis:
    """What a log proves: the winning code, every matched line, and the line that decided."""

    code: ErrorCode
    matched: list[MatchedLine]
    primary: MatchedLine
    # A context size the engine itself says would fit (vLLM prints one when the KV cache is too
    # small); None when the log names none.
    suggested_context_size: int | None = field(default=None)


def _p(code: ErrorCode, pattern: str, specificity: int, description: str, flags: int = _I) -> LogPattern:
    return LogPattern(code, re.compile(pattern, flags), specificity, description)


OOM = ErrorCode.OOM
CUDA = ErrorCode.CUDA_ERROR
LOAD = ErrorCode.MODEL_LOADING_FAILURE
RUNTIME = ErrorCode.RUNTIME_ERROR

COMMON_PATTERNS: tuple[LogPattern, ...] = (
    # --- OOM: the GPU / host / unified memory was too small -------------------------------
    _p(OOM, r"\b(?:CUDA|HIP|XPU|MPS) out of memory", 90, "GPU out of memory (PyTorch)"),
    _p(OOM, r"\bOutOfMemoryError\b", 90, "out-of-memory exception (torch.OutOfMemoryError)"),
    _p(
        OOM,
        r"\b(?:cuda|hip)Malloc\w*(?:\(\))? failed:?\s*out of memory|\bCUDA error:?\s*out of memory"
        r"|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED",
        90,
        "CUDA allocation failed: out of memory",
    ),
    _p(
        OOM,
        r"No available memory for the cache blocks",
        90,
        "vLLM: no GPU memory left for the KV cache",
    ),
    _p(
        OOM,
        r"larger than the maximum number of tokens that can be stored in KV cache"
        r"|larger than the available KV cache memory",
        90,
        "vLLM: the context does not fit in the KV cache",
    ),
    _p(
        OOM,
        r"\[metal::malloc\] Attempting to allocate .*greater than the maximum allowed buffer size",
        90,
        "Metal: allocation larger than the maximum buffer size",
    ),
    _p(
        OOM,
        r"Insufficient Memory \(\w*:?kIOGPUCommandBufferCallbackErrorOutOfMemory\)"
        r"|kIOGPUCommandBufferCallbackErrorOutOfMemory",
        90,
        "Metal: GPU command buffer ran out of memory",
    ),
    _p(
        OOM,
        r"(?:failed|unable) to allocate\b.*\bbuffers?\b",
        85,
        "ggml could not allocate a buffer (weights, KV cache or compute)",
    ),
    _p(
        OOM,
        r"failed to (?:create|initialize) (?:the )?context\b.*\b(?:alloc\w*|memory)\b",
        85,
        "llama.cpp could not create its context for lack of memory",
    ),
    _p(OOM, r"\[metal::malloc\] Resource limit \(\d+\) exceeded", 85, "Metal: resource limit exceeded"),
    _p(OOM, r"Cannot allocate memory", 85, "the operating system refused memory (ENOMEM)"),
    _p(
        OOM,
        # A bare "out of memory" also proves it, except in vLLM's advice printed on every start
        # ("If you are running out of memory, consider decreasing `gpu_memory_utilization` ...")
        # and in llama.cpp's pinned-memory warning (it carries on with ordinary memory).
        r"^(?!.*\bif you are running out of memory\b)(?!.*pinned memory).*\bout of memory\b",
        85,
        "out of memory",
    ),
    _p(OOM, r"std::bad_alloc", 80, "a C++ allocation failed (std::bad_alloc)"),
    # --- CUDA_ERROR: driver, runtime or device faults -------------------------------------
    _p(
        CUDA,
        # llama.cpp prints the same words at ggml_cuda_init and then carries on, on the CPU;
        # that line is matched (less specifically) below.
        r"^(?!.*ggml_cuda_init).*(?:no CUDA-capable device is detected"
        r"|CUDA driver version is insufficient for CUDA runtime version)",
        70,
        "no usable CUDA device or driver",
    ),
    _p(
        CUDA,
        r"Failed to initialize NVML|\bNVML\b.*\b(?:error|mismatch|failed|unknown)\b|\bnvml error\b",
        70,
        "NVML (the NVIDIA management library) failed",
    ),
    _p(CUDA, r"an illegal memory access was encountered", 70, "CUDA: illegal memory access"),
    _p(
        CUDA,
        r"no kernel image is available for execution on the device",
        70,
        "CUDA: the build has no kernels for this GPU",
    ),
    _p(
        CUDA,
        r"NVIDIA driver on your system is too old|Found no NVIDIA driver on your system"
        r"|No CUDA GPUs are available|Failed to infer device type",
        70,
        "no usable NVIDIA driver or GPU",
    ),
    _p(
        CUDA,
        r"lib(?:cuda|nvidia-ml|cudart|cublas\w*|cudnn\w*)\.so[.\d]*: cannot open shared object file",
        70,
        "a CUDA/NVIDIA library is missing",
    ),
    _p(
        CUDA,
        r"unspecified launch failure|device-side assert triggered|CUBLAS_STATUS_\w+|\bNCCL error\b"
        r"|cudaError\w+",
        70,
        "CUDA runtime fault",
    ),
    _p(CUDA, r"\bCUDA error\b", 65, "CUDA error"),
    _p(CUDA, r"CUDA_LAUNCH_BLOCKING", 60, "CUDA error (asynchronously reported)"),
    _p(
        CUDA,
        r"ggml_cuda_init: failed to initialize CUDA",
        45,
        "llama.cpp could not initialise CUDA (it falls back to the CPU)",
    ),
    # --- MODEL_LOADING_FAILURE: missing, corrupt or unsupported model files ----------------
    _p(
        LOAD,
        r"invalid magic|bad magic|failed to read magic|GGUF magic invalid|unknown \(magic, version\)",
        55,
        "the file is not a valid GGUF (bad magic)",
    ),
    _p(LOAD, r"gguf_init_from_file\w*:", 55, "the GGUF file could not be read"),
    _p(
        LOAD,
        r"unknown model architecture|error loading model architecture",
        55,
        "the engine does not support this model architecture",
    ),
    _p(
        LOAD,
        r"Model architectures? \[.*\] (?:are|is) not supported|Model type \S+ not supported",
        55,
        "the engine does not support this model architecture",
    ),
    _p(
        LOAD,
        r"Error while deserializing header|HeaderTooLarge|InvalidHeaderDeserialization"
        r"|MetadataIncompleteBuffer|SafetensorError|\[load_safetensors\]",
        55,
        "a safetensors file is damaged (unreadable header)",
    ),
    _p(
        LOAD,
        r"does not appear to have a file named|Can't load tokenizer|Can't load the configuration"
        r"|Unrecognized model in|Invalid repository ID or local directory"
        r"|Could not detect config format|No supported config format found|No safetensors found"
        r"|RepositoryNotFoundError|Repository Not Found",
        55,
        "model files are missing (config, tokenizer or weights)",
    ),
    _p(
        LOAD,
        r"error loading model|failed to load model|unable to load model|model loading error",
        50,
        "the engine failed to load the model",
    ),
    _p(
        LOAD,
        r"No such file or directory|FileNotFoundError|\bfile not found\b|\bfailed to open\b",
        40,
        "a file was not found",
    ),
    # --- RUNTIME_ERROR: something crashed, nothing more specific said why -----------------
    _p(RUNTIME, r"\bRuntimeError\b", 15, "runtime error"),
    _p(
        RUNTIME,
        r"\b(?:[A-Z]\w*)?(?:Error|Exception)(?::\s|:$|\s*$)",
        15,
        "exception",
        flags=0,  # case matters: "ValueError:" yes, a log level "ERROR" no
    ),
    _p(RUNTIME, r"GGML_ASSERT\(.*\) failed", 20, "an internal check of llama.cpp failed"),
    _p(
        RUNTIME,
        r"terminate called after throwing|libc\+\+abi: terminating|^\s*what\(\):|Fatal Python error"
        r"|\berror:\s",
        15,
        "the engine crashed with an error",
    ),
    # Says that it died, not why: less than any line that says why.
    _p(RUNTIME, r"Segmentation fault|core dumped|\bAborted\b", 12, "the engine crashed"),
    _p(RUNTIME, r"Traceback \(most recent call last\)", 10, "Python traceback"),
)


def _patterns(extra_patterns: Sequence[LogPattern]) -> tuple[LogPattern, ...]:
    # Engine patterns first: on a tie within one line, the engine's own description wins.
    return tuple(extra_patterns) + COMMON_PATTERNS


def _best(line: str, patterns: Sequence[LogPattern]) -> LogPattern | None:
    best: LogPattern | None = None
    for pattern in patterns:
        if (best is None or pattern.specificity > best.specificity) and pattern.matches(line):
            best = pattern
    return best


def _text(line: str) -> str:
    return line.rstrip("\r\n")


def mark_lines(lines: Sequence[str], extra_patterns: Sequence[LogPattern] = ()) -> list[MatchedLine]:
    """Every line that matched a pattern, in order, each with the code of its most specific match."""
    patterns = _patterns(extra_patterns)
    marked: list[MatchedLine] = []
    for index, raw in enumerate(lines):
        text = _text(raw)
        best = _best(text, patterns)
        if best is not None:
            marked.append(MatchedLine(index, text, best.code, best.description, best.specificity))
    return marked


_CONTEXT_HINTS = (
    # vLLM V1: "... Based on the available memory, the estimated maximum model length is 20976."
    re.compile(r"estimated maximum model length is (\d+)", _I),
    # vLLM V0: "... the maximum number of tokens that can be stored in KV cache (3664)."
    re.compile(r"maximum number of tokens that can be stored in KV cache \((\d+)\)", _I),
)


def _suggested_context_size(lines: Sequence[str]) -> int | None:
    for raw in reversed(lines):
        for hint in _CONTEXT_HINTS:
            found = hint.search(raw)
            if found and int(found.group(1)) > 0:
                return int(found.group(1))
    return None


def classify_log(lines: Sequence[str], extra_patterns: Sequence[LogPattern] = ()) -> LogDiagnosis | None:
    """The code the log proves, or None when no line matches any pattern.

    The most specific match anywhere wins; among equally specific matches, the last one.
    """
    matched = mark_lines(lines, extra_patterns)
    if not matched:
        return None
    primary = matched[0]
    for line in matched[1:]:
        if line.specificity >= primary.specificity:
            primary = line
    suggestion = _suggested_context_size(lines) if primary.code is ErrorCode.OOM else None
    return LogDiagnosis(primary.code, matched, primary, suggestion)


# --- exit facts ------------------------------------------------------------------------------

_PREFIXES = (
    re.compile(r"^\s*\([\w.-]+(?: [\w.-]+=\d+)*\)\s*"),  # vLLM: "(EngineCore_DP0 pid=42) "
    re.compile(r"^\s*\[rank\d+\]:\s*"),  # torch.distributed: "[rank0]: "
    re.compile(r"^\s*[\w.-]+\s+\|\s"),  # docker compose: "vllm-1  | "
    re.compile(r"^\s*\d{4}-\d\d-\d\d[T ][\d:.,]+Z?\s+(?:-\s+)?"),  # ISO timestamps
    re.compile(  # vLLM: "ERROR 04-30 10:20:36 [core.py:396] " (older: "engine.py:366] ")
        r"^\s*(?:INFO|WARNING|ERROR|DEBUG|CRITICAL)\s+\d\d-\d\d\s+[\d:.]+\s+\[?[\w./-]+:\d+\]\s*"
    ),
    re.compile(r"^\s*\d+\.\d\d\.\d{3}\.\d{3} [DIWE] "),  # llama.cpp timestamps: "1.06.520.077 E "
)


def _evidence(text: str, patterns: Sequence[LogPattern] = ()) -> str:
    """The line, without the log prefixes that say nothing to a reader, and not too long.

    A long line is cut around the words that matched, so that the proof stays in the message.
    """
    cleaned = text
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            stripped = prefix.sub("", cleaned, count=1)
            if stripped != cleaned and stripped.strip():
                cleaned, changed = stripped, True
    cleaned = cleaned.strip()
    if len(cleaned) <= MAX_EVIDENCE_CHARS:
        return cleaned
    best = _best(cleaned, patterns)
    found = best.regex.search(cleaned) if best is not None else None
    if found is None or found.end() <= MAX_EVIDENCE_CHARS - 3:
        return cleaned[: MAX_EVIDENCE_CHARS - 3].rstrip() + "..."
    # End the window a little after the match (patterns may start with "^.*", so use its end).
    width = MAX_EVIDENCE_CHARS - 6
    end = min(len(cleaned), found.end() + 40)
    start = max(0, end - width)
    window = cleaned[start:end].strip()
    return "..." + window + ("..." if end < len(cleaned) else "")


def _signal_name(number: int) -> str | None:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return None


SIGKILL = 9


def _how_it_ended(exit_code: int | None, signal: int | None) -> str:
    """'exited with status 1', 'was killed by signal 9 (SIGKILL)', ... (no subject, no period)."""
    if signal is not None:
        name = _signal_name(signal)
        return f"was killed by signal {signal}" + (f" ({name})" if name else "")
    if exit_code is None:
        return "stopped without an exit status"
    if exit_code > 128 and _signal_name(exit_code - 128):
        return f"exited with status {exit_code} (signal {exit_code - 128}, {_signal_name(exit_code - 128)})"
    return f"exited with status {exit_code}"


def _killed(exit_code: int | None, signal: int | None) -> bool:
    return signal == SIGKILL or (signal is None and exit_code == 128 + SIGKILL)


def _failure_lines(diagnosis: LogDiagnosis) -> list[str]:
    matched = diagnosis.matched
    if len(matched) <= MAX_FAILURE_LINES:
        return [line.text for line in matched]
    # Keep the lines of the winning code first (the primary always), then the rest, in log order.
    ranked = sorted(
        matched,
        key=lambda m: (m is not diagnosis.primary, m.code is not diagnosis.code, -m.index),
    )
    kept = sorted(ranked[:MAX_FAILURE_LINES], key=lambda m: m.index)
    return [line.text for line in kept]


def _tail(lines: Sequence[str]) -> list[str]:
    texts = [_text(line) for line in lines]
    while texts and not texts[-1].strip():
        texts.pop()
    return texts[-TAIL_LINES:]


def classify_exit(
    lines: Sequence[str],
    exit_code: int | None,
    signal: int | None,
    oom_killed: bool = False,
    extra_patterns: Sequence[LogPattern] = (),
) -> Failure:
    """The Failure for an engine that stopped: its log's diagnosis first, then the exit facts.

    - A log pattern decides, except that OOM-killer evidence outranks a merely generic
      RUNTIME_ERROR (a traceback printed as the process died says less than the kernel does).
    - OOM-killer evidence (oom_killed, as Docker's State.OOMKilled or the supervisor reports it)
      is OOM, whatever the status: SIGKILL, 137, or a parent that exited after its worker was
      killed.
    - Anything else is CONTAINER_EXITED; a SIGKILL/137 without that evidence says someone
      killed the engine.
    """
    patterns = _patterns(extra_patterns)
    diagnosis = classify_log(lines, extra_patterns)
    ended = _how_it_ended(exit_code, signal)

    if diagnosis is not None and not (oom_killed and diagnosis.code is ErrorCode.RUNTIME_ERROR):
        evidence = _evidence(diagnosis.primary.text, patterns)
        if exit_code is None and signal is None:
            message = f"The engine log shows {diagnosis.primary.description}: {evidence}"
        else:
            message = f"The engine {ended}: {evidence}"
        return Failure(
            code=diagnosis.code,
            message=message,
            log_lines=_failure_lines(diagnosis),
            exit_code=exit_code,
            signal=signal,
        )

    if oom_killed:
        message = f"The engine {ended} and the kernel's out-of-memory killer stopped it: the node ran out of memory."
        log_lines = _failure_lines(diagnosis) if diagnosis is not None else _tail(lines)
        return Failure(code=ErrorCode.OOM, message=message, log_lines=log_lines, exit_code=exit_code, signal=signal)

    tail = _tail(lines)
    if _killed(exit_code, signal):
        message = (
            f"The engine {ended} with no sign of the out-of-memory killer, "
            "so something outside the engine killed it."
        )
    elif exit_code == 0 and signal is None:
        message = f"The engine {ended}: it stopped by itself without reporting an error."
    else:
        last = next((_evidence(t) for t in reversed(tail) if t.strip()), None)
        message = f"The engine {ended}" + (
            f" with no recognised error; its last log line was: {last}" if last else " and wrote no log."
        )
    return Failure(
        code=ErrorCode.CONTAINER_EXITED,
        message=message,
        log_lines=tail,
        exit_code=exit_code,
        signal=signal,
    )
