"""What the `berth` CLI prints: states, failures, tables, and following a deployment live.

Works on the API's JSON (dicts), so the CLI stays a thin HTTP client.
"""

import itertools
import re
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TextIO

SUCCESS = frozenset({"DEPLOYED"})
FAILURE = frozenset({"ERROR", "FAILED", "MUST_REDOWNLOAD"})
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
CLEAR_LINE = "\r\x1b[2K"


# Terminal controls in what a deployment carries (a model string, an error message, a transition
# detail can come straight through Temporal): C0/C1 controls but newline and tab, DEL, and the
# bidirectional overrides that reorder what a person reads.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text as a terminal should show it: every control written out (\\x1b), never obeyed."""
    return _CONTROLS.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


def clock(at: str | None) -> str:
    """'14:03:07' in local time, from the API's ISO timestamp."""
    if not at:
        return "--:--:--"
    try:
        return datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return at


def transition_line(transition: dict) -> str:
    line = f"{clock(transition.get('at'))}  {transition['status']:<15} {transition.get('detail', '')}".rstrip()
    return printable(line)


def transition_key(transition: dict) -> tuple:
    return transition.get("at"), transition.get("status"), transition.get("detail")


def last_transition_key(state: dict) -> tuple | None:
    transitions = state.get("transitions") or []
    return transition_key(transitions[-1]) if transitions else None


def new_transitions(state: dict, seen: tuple | None) -> list[dict]:
    """The transitions after the one with key `seen` (all of them when it is gone or None)."""
    transitions = state.get("transitions") or []
    if seen is None:
        return transitions
    keys = [transition_key(t) for t in transitions]
    if seen not in keys:
        return transitions
    return transitions[keys.index(seen) + 1 :]


def failure_text(state: dict) -> str:
    """The code, the message, the guidance and the log lines that prove it."""
    name, status, error = state.get("name"), state.get("status"), state.get("error")
    if not error:
        return f"{name} is {status}"
    lines = [
        f"{name} is {status}: {error['code']}",
        f"  {error['message']}",
        f"  what to do: {error['guidance']}",
    ]
    if status == "ERROR" and state.get("next_retry_at"):
        lines.append(
            f"  berth retries by itself at {clock(state['next_retry_at'])} "
            f"(automatic attempt {state.get('attempts', 0)}); `berth stop {name}` gives up"
        )
    if error.get("log_lines"):
        lines.append("  log lines that show it:")
        lines += [f"    | {line}" for line in error["log_lines"]]
    return printable("\n".join(lines))


def outcome_text(state: dict) -> str:
    """The last line(s) of a --wait: where it serves, or why it does not."""
    status = state.get("status")
    if status == "DEPLOYED":
        return f"{state['name']} is DEPLOYED: {state.get('endpoint') or ''}".rstrip(": ")
    if status in FAILURE:
        return failure_text(state)
    return f"{state.get('name')} is {status}"


def state_text(state: dict, transitions: int = 5) -> str:
    """`berth status NAME`: everything a person asks first, then the recent transitions."""
    rows = [("name", state.get("name")), ("status", state.get("status"))]
    engine = state.get("engine")
    if engine:
        reasons = "; ".join(state.get("engine_reasons") or [])
        rows.append(("engine", f"{engine} ({reasons})" if reasons else engine))
    spec = state.get("spec") or {}
    rows.append(("model", spec.get("model")))
    if state.get("model_choice"):
        rows.append(("chosen", state["model_choice"]))
    if state.get("download"):
        rows.append(("download", progress_text(state["download"])))
    if state.get("context_size") or spec.get("context_size"):
        rows.append(("context", str(state.get("context_size") or spec.get("context_size"))))
    if spec.get("env"):  # names only: the API never answers a value, nor does this
        rows.append(("env", f"{', '.join(sorted(spec['env']))} (values hidden)"))
    rows.append(("endpoint", state.get("endpoint") or "-"))
    instances = state.get("instances") or []
    replicas = state.get("replicas", 1)
    if replicas != 1 or len(instances) > 1:
        degraded = " (degraded)" if state.get("degraded") else ""
        rows.append(("replicas", f"{state.get('ready_replicas', 0)}/{replicas} serve{degraded}"))
        if state.get("rollout"):
            rows.append(("rollout", state["rollout"]))
    elif instances:
        instance = instances[0]
        facts = [instance.get("status", "")]
        if instance.get("pid"):
            facts.append(f"pid {instance['pid']}")
        if instance.get("port"):
            facts.append(f"port {instance['port']}")
        rows.append(("instance", f"{instance['instance_id']} on {instance['node']}: {', '.join(facts)}"))
        if instance.get("log_path"):
            rows.append(("log", f"{instance['log_path']} (berth logs {state.get('name')})"))
    if state.get("rejected_patch"):
        rows.append(("rejected", f"last retry patch: {state['rejected_patch']}"))
    width = max(len(label) for label, _ in rows)
    text = [f"{label:<{width}}  {value}" for label, value in rows if value is not None]
    if replicas != 1 or len(instances) > 1:
        text += ["", instances_table(instances)] if instances else []
        for instance in instances:
            if instance.get("error") and instance.get("status") != "DEPLOYED":
                error = instance["error"]
                text.append(f"  {instance['instance_id']}: {error['code']}: {error['message']}")
    if state.get("error"):
        text += ["", failure_text(state)]
    recent = (state.get("transitions") or [])[-transitions:]
    if recent:
        text += ["", "recent transitions:"] + [f"  {transition_line(t)}" for t in recent]
    return printable("\n".join(text))


def instances_table(instances: list[dict]) -> str:
    """`berth status NAME` for several instances: one row each."""
    rows = []
    for instance in instances:
        error = (instance.get("error") or {}).get("code", "") if instance.get("status") != "DEPLOYED" else ""
        rows.append([
            instance["instance_id"], instance.get("status", ""), instance.get("node", ""),
            str(instance.get("port") or "-"), str(instance.get("pid") or "-"), str(instance.get("restarts", 0)),
            "yes" if instance.get("routed") else "no", error or "-",
        ])
    return table(rows, header=["INSTANCE", "STATUS", "NODE", "PORT", "PID", "RESTARTS", "ROUTED", "ERROR"])


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.1f} MB" if n_bytes < 1e9 else f"{n_bytes / 1e9:,.2f} GB"


def progress_text(download: dict, width: int = 24) -> str:
    """'[##########..............] 42.0%  105.0 MB of 250.0 MB  model.gguf (1/1, resumed at 40.0 MB)'"""
    done, total = download.get("bytes_done") or 0, download.get("bytes_total")
    if total:
        filled = min(width, int(width * done / total))
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {100 * min(done, total) / total:5.1f}%"
        amount = f"{_megabytes(done)} of {_megabytes(total)}"
    else:
        bar, amount = "[size unknown]", _megabytes(done)
    facts = []
    if (download.get("files_total") or 0) > 1:
        facts.append(f"{download.get('files_done', 0)}/{download['files_total']} files")
    if download.get("resumed_from"):
        facts.append(f"resumed at {_megabytes(download['resumed_from'])}")
    where = download.get("file") or download.get("source") or ""
    return f"{bar}  {amount}  {where}" + (f" ({', '.join(facts)})" if facts else "")


def progress_step(download: dict | None, steps: int = 10) -> int | None:
    """Which tenth of the download is done (for printing progress without a terminal), None if none."""
    if not download:
        return None
    total = download.get("bytes_total")
    if not total:
        return 0
    return min(steps, int(steps * (download.get("bytes_done") or 0) / total))


def table(rows: Iterable[Iterable[str]], header: Iterable[str]) -> str:
    rows = [[printable(str(cell or "-")) for cell in row] for row in rows]
    header = list(header)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines)


def follow(
    fetch: Callable[[], dict],
    out: TextIO,
    *,
    done_ok: frozenset[str] = SUCCESS,
    done_bad: frozenset[str] = FAILURE | {"STOPPED"},
    seen: tuple | None = None,
    require_new: bool = False,
    live: bool = False,
    poll_s: float = 0.2,
    prefix: str = "",
) -> tuple[int, dict]:
    """Print each transition as it happens until the status is in done_ok (0) or done_bad (1).

    `seen`: the last transition already shown (those up to it are not printed again).
    `require_new`: end only after a transition newer than `seen` (e.g. after a retry, the old
    FAILED must not count). `live`: on a terminal, also keep one status line with a spinner.
    `prefix`: put before each transition line.
    """
    started = time.monotonic()
    spinner = itertools.cycle(SPINNER)
    fresh = not require_new
    shown_step: int | None = None  # without a terminal: progress printed once per tenth
    while True:
        state = fetch()
        arrived = new_transitions(state, seen)
        if arrived:
            if live:
                out.write(CLEAR_LINE)
            for transition in arrived:
                out.write(prefix + transition_line(transition) + "\n")
            seen, fresh = transition_key(arrived[-1]), True
        download = state.get("download")
        step = progress_step(download)
        if not live and step is not None and step != shown_step:
            out.write(f"{prefix}{'':10}  downloading     {progress_text(download)}\n")
        shown_step = step
        status = state.get("status")
        if fresh and status in done_ok | done_bad:
            if live:
                out.write(CLEAR_LINE)
            out.flush()
            return (0 if status in done_ok else 1), state
        if live:
            detail = ((state.get("transitions") or [{}])[-1]).get("detail", "")
            if download:
                detail = progress_text(download)
            line = f"{next(spinner)} {state.get('name')} {status}  {detail}  ({time.monotonic() - started:.0f} s)"
            out.write(CLEAR_LINE + line[: shutil.get_terminal_size().columns - 1])
        out.flush()
        time.sleep(poll_s)


# ---- berth engines ----------------------------------------------------------------------------------


def _size(n_bytes) -> str:
    from berth.domain.hardware import gib  # pydantic: only for this command

    return gib(n_bytes) if n_bytes is not None else "?"


def _labelled(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max(len(label) for label, _ in rows)
    return [f"{indent}{label:<{width}}  {value}" for label, value in rows]


def hardware_rows(hardware: dict) -> list[tuple[str, str]]:
    rows = [
        ("os", f"{hardware.get('os')} {hardware.get('arch')}"),
        ("cpu", f"{hardware.get('cpu_cores')} cores"),
        ("memory", f"{_size(hardware.get('ram_total'))} RAM, {_size(hardware.get('ram_available'))} available"),
    ]
    apple = hardware.get("apple_silicon")
    if apple:
        rows.append(("chip", f"{apple['chip']}, {_size(apple['unified_memory'])} unified memory"))
    gpus = hardware.get("gpus") or []
    if not gpus:
        rows.append(("gpus", "no NVIDIA GPU"))
    for gpu in gpus:
        facts = [f"{_size(gpu['memory_total'])}", f"{_size(gpu['memory_free'])} free"]
        if gpu.get("compute_capability"):
            facts.append(f"compute capability {gpu['compute_capability']}")
        rows.append(("gpu", f"{gpu['index']}: {gpu['name']} ({', '.join(facts)})"))
    if hardware.get("driver_version") or hardware.get("cuda_version"):
        rows.append(("driver", f"NVIDIA {hardware.get('driver_version') or '?'}, CUDA {hardware.get('cuda_version') or '?'}"))
    rows.append(("docker", "a Docker engine answers" if hardware.get("docker_available") else "no Docker engine answers"))
    for note in hardware.get("notes") or []:
        rows.append(("note", note))
    return rows


def engines_text(report: dict, source: str) -> str:
    """`berth engines [MODEL]`: the hardware, each engine and why, and MODEL's engine or refusal."""
    lines = [f"hardware of {source}", *_labelled(hardware_rows(report["hardware"])), "", "engines"]
    engines = report.get("engines") or []
    asked = report.get("model") is not None
    header = ["ENGINE", "FORMATS", "RUNS HERE", *(["SERVES MODEL"] if asked else []), "WHY"]
    rows = [
        [e["name"], ",".join(e["formats"]), "yes" if e["available"] else "no",
         *((["yes" if e.get("serves_model") else "no"]) if asked else []), e["why"]]
        for e in engines
    ]
    lines += ["  " + line for line in table(rows, header).splitlines()]
    model, selection = report.get("model"), report.get("selection") or {}
    if model:
        facts = [model.get("format") or "format unknown"]
        if model.get("size_bytes"):
            facts.append(_size(model["size_bytes"]))
        if model.get("preset"):
            facts.append(f"preset {model['preset']}")
        if not model.get("found") and not model.get("preset") and model.get("format"):
            facts.append("no such file here: judged by its name")
        lines += ["", f"model {model['reference']} ({', '.join(facts)})"]
        if "refused" in selection:
            lines += _labelled([("refused", selection["refused"])])
        else:
            reasons = selection.get("reasons") or []
            rows = [("engine", selection.get("engine", "?"))]
            rows += [("why" if i == 0 else "", reason) for i, reason in enumerate(reasons)]
            lines += _labelled(rows)
    return "\n".join(lines)
