"""Reading an engine's log: which lines prove what went wrong, and which ErrorCode that is.

The tables of log patterns (berth.domain.log_patterns: one per engine and the common one, plus
whatever an Engine class adds) are matched line by line. Every pattern has a specificity; the
most specific match anywhere in the log decides the code, and among equally specific matches the
last one wins (the engine's final word). The ranking, from most to least specific:

    OOM (90..80) > CUDA_ERROR (70..60) > MODEL_LOADING_FAILURE (55..40) > RUNTIME_ERROR (20..10)

so a generic traceback never hides the out-of-memory line above it, "CUDA error: out of memory"
is OOM, and "llama_model_load: error loading model: unable to allocate CUDA0 buffer" is OOM.

`classify_exit` adds what the process supervisor knows (exit status, signal, the OOM killer) and
returns the `Failure` that the workflow records. Pure functions, no I/O.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, field
from typing import Sequence

from .errors import ErrorCode, Failure
from .log_patterns import ALL_PATTERNS, LogPattern
from .log_patterns.common import LOG_PREFIXES
from .log_patterns.vllm import CONTEXT_HINTS

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


# Every table's patterns (the name is older than the tables: every engine's log is read against them).
COMMON_PATTERNS: tuple[LogPattern, ...] = ALL_PATTERNS


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


def _suggested_context_size(lines: Sequence[str]) -> int | None:
    for raw in reversed(lines):
        for hint in CONTEXT_HINTS:
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

def _evidence(text: str, patterns: Sequence[LogPattern] = ()) -> str:
    """The line, without the log prefixes that say nothing to a reader, and not too long.

    A long line is cut around the words that matched, so that the proof stays in the message.
    """
    cleaned = text
    changed = True
    while changed:
        changed = False
        for prefix in LOG_PREFIXES:
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
