"""P2 crash detection, P3 recovery, P3b time to a named failure.

P2/P3: a fresh deployment of the tiny GGUF per run, with berth's default restart policy (so each
kill is the first crash of a deployment that served, as after a long stable run). Once it is
DEPLOYED, the engine process (state.pid, the llama.cpp server itself, not its /bin/sh wrapper) gets
SIGKILL; the `state` query is asked at each of the workflow's task completions (history long-poll,
see common.wait_status) until it no longer says DEPLOYED (P2), then until it says DEPLOYED again
with a new pid (P3). The history splits both into: supervise noticing the exit,
the workflow's reaction (stop_engine, the ERROR transition), the restart backoff timer, and the
pipeline run again. P3's reference is the bare engine's start time on the same model (P1's samples).

P3b: a 64 KiB random-bytes file named .gguf (berth.testing.tiny_gguf.write_garbage_gguf); request ->
FAILED with MODEL_LOADING_FAILURE, watched the same way. Bare: the same launcher on the same file,
spawn -> process exit (the engine's own failure, nothing else in between).
"""

from __future__ import annotations

import os
import signal
import statistics
import time

from bench.common import (
    Bench,
    Row,
    bare_argv,
    bare_start,
    breakdown,
    deploy,
    describe_breakdown,
    event_time,
    history,
    merge_breakdowns,
    secs,
    spawn_bare,
    spec,
    spread,
    steps,
    stop,
    summary,
    wait_status,
)
from berth.domain.errors import ErrorCode
from berth.domain.status import DeploymentStatus
from berth.testing.harness import free_port

DETECT_TARGET_S = 0.25
RECOVER_MARGIN_S = 1.0
FAILURE_TARGET_S = 2.0
IDS = {"P2", "P3", "P3b"}


def _after(events, since: float, kind: str) -> float | None:
    for event in events:
        if event.WhichOneof("attributes") == kind and event_time(event) >= since:
            return event_time(event)
    return None


async def crash_and_recover(bench: Bench, client, runs: int) -> None:
    tiny = bench.tiny_model()
    detect, recover, detect_parts, recover_parts, cycle_events, backoffs = [], [], [], [], [], []
    for i in range(runs):
        name = f"p2-{i}"
        _, _, state = await deploy(client, spec(name, tiny))
        if state.status is not DeploymentStatus.DEPLOYED:
            raise RuntimeError(f"{name}: {state.status.value}: {state.error}")
        before = len(await history(client, name))
        pid = state.pid
        killed_wall = time.time()
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        seen, down = await wait_status(client, name, lambda s: s.status is not DeploymentStatus.DEPLOYED, 30)
        detect.append(seen - killed)
        back_seen, _ = await wait_status(
            client, name, lambda s, old=pid: s.status is DeploymentStatus.DEPLOYED and s.pid not in (None, old), 60
        )
        recover.append(back_seen - killed)
        events = await history(client, name)
        cycle_events.append(len(events) - before)

        supervise = [s for s in steps(events) if s.kind == "supervise"]
        noticed = supervise[0].closed if supervise and supervise[0].closed else killed_wall
        errored = _after(events, noticed, "upsert_workflow_search_attributes_event_attributes") or noticed
        timer_started = _after(events, noticed, "timer_started_event_attributes")
        timer_fired = _after(events, noticed, "timer_fired_event_attributes")
        redeployed = supervise[1].scheduled if len(supervise) > 1 else errored
        part = {"supervise: kill -> activity closed": max(0.0, noticed - killed_wall)}
        part |= {f"then {k}": v for k, v in breakdown(events, noticed, errored).items()}
        part["ERROR recorded -> seen in the history"] = max(0.0, killed_wall + detect[-1] - errored)
        detect_parts.append(part)
        if timer_started and timer_fired:
            backoffs.append(timer_fired - timer_started)
        rpart = {"detect (P2)": detect[-1], "backoff timer": (timer_fired - timer_started) if timer_started and timer_fired else 0.0}
        rpart |= {f"redeploy: {k}": v for k, v in breakdown(events, timer_fired or errored, redeployed).items()}
        recover_parts.append(rpart)
        bench.log(f"P2/P3 run {i + 1}/{runs}: down seen after {detect[-1]:.3f} s ({down.status.value}), "
                  f"DEPLOYED again after {recover[-1]:.3f} s; {cycle_events[-1]} history events for the cycle")
        await stop(client, name)

    bench.shared["crash_cycle_events"] = cycle_events
    bench.add(Row(
        "P2", "kill -9 engine -> state no longer DEPLOYED", f"<= {secs(DETECT_TARGET_S)}", spread(detect),
        passed=statistics.median(detect) <= DETECT_TARGET_S,
        values={"detect_s": summary(detect), "breakdown_s": merge_breakdowns(detect_parts)},
        notes=["where the time goes (median): " + describe_breakdown(merge_breakdowns(detect_parts), 10)],
    ))
    bare = bench.shared.get("bare_tiny_s") or [bare_start(bench, tiny) for _ in range(3)]
    bare_median = statistics.median(bare)
    limit = bare_median + RECOVER_MARGIN_S
    bench.add(Row(
        "P3", "kill -9 engine -> DEPLOYED again (new pid)", f"<= bare + 1 s ({secs(limit)})", spread(recover),
        spread(bare), f"+{secs(statistics.median(recover) - bare_median)}",
        passed=statistics.median(recover) <= limit,
        values={"recover_s": summary(recover), "bare_s": summary(bare), "backoff_s": summary(backoffs),
                "breakdown_s": merge_breakdowns(recover_parts), "history_events_per_cycle": cycle_events},
        notes=[
            "default RestartPolicy (first automatic restart after backoff_initial_s); where the time goes "
            "(median): " + describe_breakdown(merge_breakdowns(recover_parts), 12),
        ],
    ))


async def named_failure(bench: Bench, client, runs: int) -> None:
    garbage = bench.garbage_model()
    took, bare, parts, lines, codes = [], [], [], [], []
    for i in range(runs):
        name = f"p3b-{i}"
        wall, t, state = await deploy(client, spec(name, garbage))
        took.append(t)
        codes.append(state.error.code.value if state.error else state.status.value)
        if state.error:
            lines = state.error.log_lines
        events = await history(client, name)
        parts.append(breakdown(events, event_time(events[0]), wall + t))
        await stop(client, name)
        port = free_port()
        started = time.perf_counter()
        popen = spawn_bare(bench, bare_argv(garbage, port), bench.workdir / "bare-logs" / "garbage.log")
        popen.wait(60)
        bare.append(time.perf_counter() - started)
    ok = all(code == ErrorCode.MODEL_LOADING_FAILURE.value for code in codes)
    own = [l for l in lines if l.strip() and not l.startswith(("===", "berth launcher:"))]
    engine_line = (own or lines or ["(no log line)"])[0].strip()
    bench.add(Row(
        "P3b", "random-bytes .gguf -> FAILED MODEL_LOADING_FAILURE", f"<= {secs(FAILURE_TARGET_S)}",
        spread(took), spread(bare) + " (exit)", f"+{secs(statistics.median(took) - statistics.median(bare))}",
        passed=ok and statistics.median(took) <= FAILURE_TARGET_S,
        values={"failed_s": summary(took), "bare_exit_s": summary(bare), "codes": codes, "log_lines": lines,
                "breakdown_s": merge_breakdowns(parts)},
        notes=[f"codes: {sorted(set(codes))}; the engine's own line: {engine_line!r}",
               "where the time goes (median): " + describe_breakdown(merge_breakdowns(parts), 10)],
    ))


async def run(bench: Bench, stack, client) -> None:
    if bench.wants("P2") or bench.wants("P3"):
        await crash_and_recover(bench, client, bench.runs(5, 3))
    if bench.wants("P3b"):
        await named_failure(bench, client, bench.runs(3, 2))
