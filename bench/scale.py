"""P5 scale of the control plane.

P5a, N deployments with a STAND-IN ENGINE: berth's real pipeline (select, plan, port, route, files,
launch, await_ready through the gateway, supervise) launches bench/standin_engine.py, a real HTTP
server process (stdlib only, `python -I -S`, ~10 MB RSS), through BERTH_LLAMA_SERVER, in a stack of
its own. N is the asked number (1000; --quick 100) or what fits in free memory, whichever is smaller.
They are started 30 in flight at a time for a time budget (240 s; --quick 120 s); where the machine
cannot bring all N to DEPLOYED within it, the rest of the N are started as "parked" deployment
workflows (REQUESTED, on a task queue no worker polls: rows of the list with no engine), and the
row says how many of each. Then, with N deployment workflows in Temporal, sequentially, p50/p99:
`GET /v1/deployments` (REST, with the API token: one page of the API's default size, 50 rows;
following every page is reported beside it; also Temporal's list_workflows with the API's query,
WorkflowType = 'DeploymentWorkflow', which is all the API does), and status reads of random
DEPLOYED deployments (the `state` query, and GET /v1/deployments/NAME). The reads are timed twice:
right after the burst of deployments and again once Traefik is quiet (two 2 s samples under 5% of
a core); the rows report the second, their notes the first (until the route table, Traefik worked
through a queue of reloads for 25-70 s after a burst). Also: how fast the stand-ins reached DEPLOYED, and the control plane's CPU (sampled
every 2 s throughout) and memory while they are supervised.

P5b, concurrent tiny GGUF deployments: K real llama.cpp engines, K = as many as free memory allows
(--quick 20, --concurrent K to choose; until round 10 capped at 50). All K workflows started at once
-> the last one DEPLOYED, against K bare engines spawned at once -> the last /health 200.

P5c, history growth under supervision: one tiny deployment is DEPLOYED at the start of the main
stack's session and left alone while the other measurements run; its history event count is read
when it becomes DEPLOYED and again at the end, with the pending supervise activity's attempt and
last heartbeat (heartbeats update the pending activity in Temporal's mutable state and add no history
events). Events per hour are extrapolated linearly from the minutes actually observed; a crash-restart
cycle's events (from P2) are reported beside it, as that is what makes the history grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

from bench.console import console_reads, console_row
from bench.common import (
    OVERCOMMIT,
    Bench,
    Row,
    api_answers,
    api_url,
    auth_headers,
    component,
    cpu_seconds,
    cpu_used,
    bare_argv,
    breakdown,
    deploy,
    describe_breakdown,
    event_time,
    history,
    merge_breakdowns,
    ms,
    percentile,
    query_state,
    secs,
    spawn_bare,
    spec,
    stack_session,
    stop_all,
    stop_bare,
    summary,
    wait_status,
)
from berth.api.facade.counts import CACHE_S as METRICS_CACHE_S
from berth.domain.status import DeploymentStatus
from berth.domain.temporal_names import (
    MODEL_ATTRIBUTE,
    STATUS_ATTRIBUTE,
    WORKFLOW_TYPE,
    workflow_id,
)
from berth.settings import NAMESPACE
from berth.testing.harness import free_port, processes_with_home, start_deployment
from berth.workflows.deployment import DeploymentInput

READ_P99_TARGET_S = 0.100
STANDIN = Path(__file__).resolve().parent / "standin_engine.py"
RESERVE_BYTES = 4 * 2**30  # left free for the control plane, the page cache and everyone else
IDS = {"P5a", "P5b", "P5c"}



# ---- P5c: history under supervision ------------------------------------------------------------


async def start_history_watch(bench: Bench, client) -> dict:
    name = "p5c-history"
    _, _, state = await deploy(client, spec(name, bench.tiny_model()))
    if state.status is not DeploymentStatus.DEPLOYED:
        raise RuntimeError(f"{name}: {state.status.value}: {state.error}")
    return {"name": name, "since": time.time(), "events": len(await history(client, name)), "pid": state.pid}


async def finish_history_watch(bench: Bench, client, watch: dict) -> None:
    name = watch["name"]
    elapsed = time.time() - watch["since"]
    events = len(await history(client, name))
    state = await query_state(client, name)
    description = await client.get_workflow_handle(workflow_id(name)).describe()
    pending = [
        {"activity": p.activity_type.name, "attempt": p.attempt,
         "last_heartbeat_age_s": round(time.time() - p.last_heartbeat_time.ToDatetime().timestamp(), 1)
         if p.HasField("last_heartbeat_time") else None}
        for p in description.raw_description.pending_activities
    ]
    added = events - watch["events"]
    per_hour = added / elapsed * 3600
    cycle = bench.shared.get("crash_cycle_events") or []
    await stop_all(client, [name])
    same_engine = state.pid == watch["pid"] and state.status is DeploymentStatus.DEPLOYED
    bench.add(Row(
        "P5c", "history events of a DEPLOYED deployment, 1 h of supervision", "bounded",
        f"{watch['events']} -> {events} in {elapsed / 60:.1f} min ({per_hour:+.0f}/h extrapolated)",
        "-", "-", passed=added == 0 and same_engine,
        values={"events_at_deployed": watch["events"], "events_at_end": events, "observed_s": elapsed,
                "extrapolated_events_per_hour": per_hour, "pending_activities": pending,
                "events_per_crash_restart_cycle": cycle},
        notes=[
            f"observed {elapsed / 60:.1f} min of real supervision (health probe every 5 s, heartbeats) "
            f"while the other measurements ran; pending: {pending}; heartbeats add no history events",
            (f"what does grow it: each crash -> restart cycle adds {statistics.median(cycle):.0f} events (P2); "
             "the workflow continues-as-new when Temporal suggests it (checked between pipeline passes)")
            if cycle else "crash -> restart cycles (P2 not run) are what add events",
        ],
    ))


# ---- P5b: concurrent tiny deployments ------------------------------------------------------------


def _engine_rss(bench: Bench, model: Path) -> int:
    port = free_port()
    return _rss_once_healthy(bench, bare_argv(model, port), port, "rss.log", timeout_s=60)


def _rss_once_healthy(bench: Bench, argv: list[str], port: int, log_name: str, timeout_s: float) -> int:
    """The resident memory of a server started by hand, once its /health answers 200 (then stopped)."""
    popen = spawn_bare(bench, argv, bench.workdir / "bare-logs" / log_name)
    try:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.02)
        return psutil.Process(popen.pid).memory_info().rss
    finally:
        stop_bare(popen)


async def concurrent_tiny(bench: Bench, stack, client) -> None:
    tiny = bench.tiny_model()
    per_engine = _engine_rss(bench, tiny)
    fit = int((psutil.virtual_memory().available - RESERVE_BYTES) / (per_engine * 1.3))
    asked = bench.shared.get("concurrent") or bench.runs(fit, 20)
    k = max(1, min(asked, fit))
    template = bench.shared.get("tiny_argv")

    # bare: K engines at once
    ports = [free_port() for _ in range(k)]
    started = time.perf_counter()
    popens = [spawn_bare(bench, bare_argv(tiny, p, template), bench.workdir / "bare-logs" / "concurrent.log") for p in ports]
    pending = set(range(k))
    try:
        with httpx.Client(timeout=httpx.Timeout(5.0, connect=1.0)) as http:
            while pending and time.perf_counter() - started < 300:
                for i in list(pending):
                    with contextlib.suppress(httpx.HTTPError):
                        if http.get(f"http://127.0.0.1:{ports[i]}/health").status_code == 200:
                            pending.discard(i)
                time.sleep(0.01)
        bare_s = time.perf_counter() - started
    finally:
        for popen in popens:
            stop_bare(popen)
    if pending:
        raise RuntimeError(f"{len(pending)} bare engines were not healthy in 300 s")

    # berth: K workflows at once
    names = [f"p5b-{i}" for i in range(k)]
    cpu_before = cpu_seconds(stack.home)
    started = time.perf_counter()
    try:
        await _burst(bench, stack, client, tiny, k, asked, fit, per_engine, bare_s, names, started, cpu_before)
    except BaseException:
        # what the burst left (a query that timed out behind it): stopped before the next row runs,
        # or P7/P8 measure a worker still busy with K deployments
        await stop_all(client, names)
        raise


async def _burst(bench: Bench, stack, client, tiny, k: int, asked: int, fit: int, per_engine: int, bare_s: float,
                 names: list[str], started: float, cpu_before) -> None:
    await asyncio.gather(*(start_deployment(client, spec(n, tiny)) for n in names))
    failed, errors = [], {}

    def settled(state) -> bool:
        if state.status is DeploymentStatus.ERROR and state.error and state.name not in errors:
            # an automatic restart follows; note why, keep waiting
            errors[state.name] = f"{state.error.code.value}: {state.error.message[:120]}"
        return state.status in (DeploymentStatus.DEPLOYED, DeploymentStatus.FAILED)

    finals = await asyncio.gather(*(wait_status(client, n, settled, 600) for n in names))
    failed = [(state.name, state.error.code.value if state.error else "?")
              for _, state in finals if state.status is DeploymentStatus.FAILED]
    berth_s = time.perf_counter() - started
    cpu = cpu_used(cpu_before, cpu_seconds(stack.home), k)
    parts = []
    for n in names:
        events = await history(client, n)
        parts.append(breakdown(events, event_time(events[0]), event_time(events[-1])))
    where = merge_breakdowns(parts)
    stopping = time.perf_counter()
    await stop_all(client, names)
    stop_s = time.perf_counter() - stopping
    bench.add(Row(
        "P5b", f"{k} concurrent tiny GGUF deployments -> all DEPLOYED", "(none)",
        f"{secs(berth_s)}" + (f" ({len(failed)} FAILED)" if failed else "")
        + (f" ({len(errors)} restarted after ERROR)" if errors else ""),
        f"{secs(bare_s)} ({k} at once)", f"x{berth_s / bare_s:.2f}", passed=None,
        values={"k": k, "fit_by_memory": fit, "engine_rss_mb": per_engine / 1e6, "berth_s": berth_s, "bare_s": bare_s,
                "failed": failed, "errors": errors, "stop_all_s": stop_s, "breakdown_s": where,
                "cpu_s_per_deployment": cpu},
        notes=[f"K = min({asked} asked, what fits: {fit} x {per_engine / 1e6:.0f} MB x 1.3 in available RAM less "
               f"{RESERVE_BYTES / 2**30:.0f} GiB); 1 engine thread each on {os.cpu_count()} cores; stopping all "
               f"{k} through berth took {secs(stop_s)}",
               "per deployment, where the time goes (median over the K, history): " + describe_breakdown(where, 10),
               "CPU per deployment (all K, until the last was DEPLOYED): "
               + ", ".join(f"{k_} {secs(v)}" for k_, v in sorted(cpu.items(), key=lambda kv: -kv[1]))]
        + ([f"errors on the way: {sorted(set(errors.values()))[:3]}"] if errors else [])
        + ([f"FAILED: {failed[:5]}"] if failed else []),
    ))


# ---- P5a: N deployments with a stand-in engine ----------------------------------------------------------


def write_standin(bench: Bench) -> Path:
    """An executable copy of standin_engine.py that runs under this Python with -I -S."""
    path = bench.workdir / "standin" / "llama-server-standin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable} -IS\n" + STANDIN.read_text())
    path.chmod(0o755)
    return path


def standin_rss(bench: Bench, script: Path, model: Path) -> int:
    port = free_port()
    argv = [str(script), "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    return _rss_once_healthy(bench, argv, port, "standin.log", timeout_s=20)


async def _count(client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def _timed_reads(n: int, read) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await read()
        samples.append(time.perf_counter() - started)
    return samples


class ControlPlaneCpu:
    """Samples the CPU % of each control-plane piece (not the engines) every `every_s` in a thread,
    so the row can say what competed with the reads, phase by phase."""

    def __init__(self, home: Path, every_s: float = 2.0):
        self.every_s = every_s
        named = [(component(p), p) for p in processes_with_home(home)]  # fixed: no scan of every engine per sample
        self.pieces = [(name, p) for name, p in named if name != "engines"]
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.marks: dict[str, float] = {}
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> ControlPlaneCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self, label: str) -> None:
        self.marks[label] = round(time.perf_counter() - self.started, 1)

    def _times(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, process in self.pieces:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                out[name] = out.get(name, 0.0) + times.user + times.system
        return out

    def _run(self) -> None:
        before, then = self._times(), time.perf_counter()
        while not self._stop.wait(self.every_s):
            now_times, now = self._times(), time.perf_counter()
            self.samples.append((round(now - self.started, 1), {
                k: round(100 * (v - before.get(k, 0.0)) / (now - then), 1) for k, v in now_times.items()}))
            before, then = now_times, now

    async def until_quiet(self, piece: str, below_percent: float, timeout_s: float) -> float:
        """Seconds until two samples in a row, both taken after this call, show `piece` under
        `below_percent` of a core (or `timeout_s`)."""
        started, first = time.perf_counter(), len(self.samples)
        while time.perf_counter() - started < timeout_s:
            recent = [cpu.get(piece, 0.0) for _, cpu in self.samples[first:][-2:]]
            if len(recent) == 2 and max(recent) < below_percent:
                break
            await asyncio.sleep(0.5)
        return time.perf_counter() - started

    def mean_between(self, start: str, end: str) -> dict[str, float]:
        """Mean CPU % of each piece over the samples between two marks."""
        inside = [cpu for t, cpu in self.samples if self.marks[start] <= t <= self.marks[end] + self.every_s]
        keys = {k for cpu in inside for k in cpu}
        return {k: round(statistics.fmean(cpu.get(k, 0.0) for cpu in inside), 1) for k in sorted(keys)} if inside else {}


def _cpu_and_memory(home: Path, seconds: float = 30.0) -> dict[str, dict]:
    """CPU % (averaged over `seconds`: 30 s covers one reconcile cycle of the worker) and RSS by piece."""
    processes = processes_with_home(home)
    for p in processes:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(seconds)
    out: dict[str, dict] = {}
    for p in processes:
        with contextlib.suppress(psutil.Error):
            part = component(p)
            entry = out.setdefault(part, {"cpu_percent": 0.0, "rss_mb": 0.0, "processes": 0})
            entry["cpu_percent"] += p.cpu_percent(None)
            entry["rss_mb"] += p.memory_info().rss / 1e6
            entry["processes"] += 1
    return {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in out.items()}


async def standin_scale(bench: Bench, asked: int) -> None:
    tiny = bench.tiny_model()
    script = write_standin(bench)
    per = standin_rss(bench, script, tiny) + 1_500_000  # + its /bin/sh wrapper
    fit = int((psutil.virtual_memory().available - RESERVE_BYTES) / per)
    n = max(1, min(asked, fit))
    bench.log(f"P5a: {n} deployments of the stand-in engine ({per / 1e6:.1f} MB each with its wrapper; {fit} would fit)")
    deploy_budget_s = bench.runs(240, 120)
    window = 30  # deployments in flight at a time: a steady stream, not one burst that all finish late
    query = f"WorkflowType = '{WORKFLOW_TYPE}'"
    with (stack_session(bench, "scale", {"BERTH_LLAMA_SERVER": str(script), **OVERCOMMIT}, stop_timeout_s=600, ports=n + 200) as stack,
          ControlPlaneCpu(stack.home) as cpu):
        client = await stack.client()
        cpu.mark("deploying")
        names: list[str] = []
        deployed_query = f"{query} AND BerthStatus = 'DEPLOYED'"
        settled_query = f"{query} AND BerthStatus IN ('DEPLOYED', 'FAILED', 'MUST_REDOWNLOAD')"
        started = time.perf_counter()
        deployed, settled, progress = 0, 0, []
        while len(names) < n and time.perf_counter() - started < deploy_budget_s:
            settled = await _count(client, settled_query)
            room = min(n - len(names), window - (len(names) - settled))
            batch = [f"s-{i:04d}" for i in range(len(names), len(names) + max(0, room))]
            await asyncio.gather(*(start_deployment(client, spec(name, tiny)) for name in batch))
            names += batch
            progress.append((round(time.perf_counter() - started, 1), len(names), settled))
            if len(progress) % 60 == 0:
                bench.log(f"P5a: {settled} settled, {len(names)} started after {time.perf_counter() - started:.0f} s")
            await asyncio.sleep(0.5)
        requested_s = time.perf_counter() - started
        drain_until = time.perf_counter() + 120
        while time.perf_counter() < drain_until:
            settled = await _count(client, settled_query)
            if settled >= len(names):
                break
            await asyncio.sleep(0.5)
        deployed = await _count(client, deployed_query)
        all_deployed_s = time.perf_counter() - started
        cpu.mark("deployed")
        statuses = {}
        for status in DeploymentStatus:
            count = await _count(client, f"{query} AND BerthStatus = '{status.value}'")
            if count:
                statuses[status.value] = count
        bench.log(f"P5a: {deployed}/{len(names)} DEPLOYED after {all_deployed_s:.1f} s ({statuses})")
        failures = await _why_not_deployed(client, query)
        if failures:
            bench.log(f"P5a: not DEPLOYED, e.g.: {failures}")
        parked = await park(client, asked - len(names), tiny)
        total = len(names) + parked
        deadline = time.perf_counter() + 30
        while await _count(client, query) < total and time.perf_counter() < deadline:
            await asyncio.sleep(0.5)
        bench.log(f"P5a: {parked} more deployment workflows parked (REQUESTED, on a queue no worker polls); "
                  f"{total} in all; measuring reads")
        await asyncio.sleep(2)  # let the visibility store settle before timing the list

        reads = bench.runs(10, 5)  # whole-list reads take seconds at N=1000: p99 of 10 is their max
        sample = random.Random(7)
        live = [e.id.removeprefix("deployment-") async for e in client.list_workflows(f"{query} AND BerthStatus = 'DEPLOYED'")]
        live = live or names
        listed = None

        async def measure_reads() -> dict[str, list[float]]:
            rows = {"temporal_list": await _timed_reads(reads, lambda: _list_all(client, query))}
            if api_answers(stack):
                headers = auth_headers(stack)
                async with httpx.AsyncClient(base_url=api_url(stack), headers=headers, timeout=60) as api:
                    async def rest_list():
                        nonlocal listed
                        response = await api.get("/v1/deployments")  # one page, the API's default size
                        response.raise_for_status()
                        listed = len(response.json()["deployments"])

                    async def rest_list_all():
                        params: dict = {"page_size": 1000}
                        while True:
                            response = await api.get("/v1/deployments", params=params)
                            response.raise_for_status()
                            if not (token := response.json()["next_page_token"]):
                                return
                            params["page_token"] = token

                    async def rest_get():
                        response = await api.get(f"/v1/deployments/{sample.choice(live)}")
                        response.raise_for_status()

                    async def rest_metrics():
                        response = await api.get("/metrics")
                        response.raise_for_status()

                    await rest_list()  # warm-up
                    rows["rest_list"] = await _timed_reads(reads, rest_list)
                    rows.update(await console_reads(stack, reads))  # the console's table (bench/console.py)
                    rows["rest_metrics"] = []
                    for _ in range(bench.runs(30, 10)):  # a scrape each, past the API's cache of the counts
                        await asyncio.sleep(METRICS_CACHE_S + 0.05)
                        rows["rest_metrics"] += await _timed_reads(1, rest_metrics)
                    rows["rest_list_all_pages"] = await _timed_reads(bench.runs(3, 2), rest_list_all)
                    rows["rest_get"] = await _timed_reads(bench.runs(200, 100), rest_get)
            rows["temporal_list_page_100"] = await _timed_reads(reads, lambda: client.workflow_service.list_workflow_executions(
                ListWorkflowExecutionsRequest(namespace=NAMESPACE, query=query, page_size=100)))
            rows["temporal_count"] = await _timed_reads(reads, lambda: _count(client, query))
            rows["state_query"] = await _timed_reads(bench.runs(300, 200), lambda: query_state(client, sample.choice(live)))
            return rows

        # Timed right after the burst, then again once the gateway is quiet, which is what the rows
        # report. Until the route table (round 7), Traefik worked through a queue of reloads for
        # 25-70 s after a burst (a full rebuild of every route per route file written); now it is
        # quiet within seconds and the two sets differ by little more than when they were taken.
        cpu.mark("reads after the burst")
        after_burst = await measure_reads()
        cpu.mark("reads after the burst done")
        settle_s = await cpu.until_quiet("traefik", 5.0, timeout_s=180)
        cpu.mark("reads")
        rows = await measure_reads()
        cpu.mark("reads done")
        temporal_list = rows["temporal_list"]
        load = await asyncio.to_thread(_cpu_and_memory, stack.home)
        history_events = len(await history(client, names[0]))
        parts = []
        for name in sample.sample(live, min(20, len(live))):
            events = await history(client, name)
            parts.append(breakdown(events, event_time(events[0]), event_time(events[-1])))
        where = merge_breakdowns(parts)

    def p(samples, q):
        return ms(percentile(samples, q))

    def percents(cpu_by_piece: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.0f}%" for k, v in cpu_by_piece.items()) or "no samples"

    contention = (f"control-plane CPU (% of one core, sampled every {cpu.every_s:.0f} s) while the reads ran: "
                  f"{percents(cpu.mean_between('reads', 'reads done'))}; while deploying: "
                  f"{percents(cpu.mean_between('deploying', 'deployed'))}")
    burst = (f"timed once the gateway was quiet ({settle_s:.0f} s after the reads that followed the burst of "
             f"deployments). Right after the burst (control-plane CPU meanwhile: "
             f"{percents(cpu.mean_between('reads after the burst', 'reads after the burst done'))}): "
             + ", ".join(f"{label} p50 {p(after_burst[key], 50)} / p99 {p(after_burst[key], 99)}"
                         for key, label in (("rest_list", "list page"), ("rest_get", "REST status"),
                                            ("state_query", "state query")) if key in after_burst))
    reached = len(names)
    label = f"N={total} ({deployed} DEPLOYED stand-ins" + (f", {parked} parked" if parked else "") + (
        f", {reached - deployed} other" if reached > deployed else "") + ")"
    common = {"n": total, "deployed_standins": reached, "not_deployed_errors": failures, "parked": parked, "asked": asked, "fit": fit, "standin_rss_mb": per / 1e6, "requested_s": requested_s,
              "all_deployed_s": all_deployed_s, "deployed": deployed, "statuses": statuses, "progress": progress[-30:],
              "load_with_n": load, "cpu_marks": cpu.marks, "cpu_timeline": cpu.samples,
              "cpu_while_deploying": cpu.mean_between("deploying", "deployed"),
              "cpu_while_reading": cpu.mean_between("reads", "reads done"),
              "cpu_while_reading_after_the_burst": cpu.mean_between("reads after the burst", "reads after the burst done"),
              "gateway_quiet_after_s": settle_s, "after_the_burst": {k: summary(v) | {"samples": None} for k, v in after_burst.items()}, "history_events_each": history_events, "breakdown_s": where}
    if "rest_list" in rows:
        bench.add(Row(
            "P5a", f"GET /v1/deployments, {label} (REST, one page: {listed} rows)", f"p99 <= {ms(READ_P99_TARGET_S)}",
            f"p50 {p(rows['rest_list'], 50)} / p99 {p(rows['rest_list'], 99)}",
            f"Temporal list: p50 {p(temporal_list, 50)} / p99 {p(temporal_list, 99)}", "-",
            passed=percentile(rows["rest_list"], 99) <= READ_P99_TARGET_S,
            values=common | {k: summary(v) | {"samples": None} for k, v in rows.items()},
            notes=[f"STAND-IN ENGINE (bench/standin_engine.py, a real HTTP server process, {per / 1e6:.1f} MB), "
                   f"launched by berth's pipeline via BERTH_LLAMA_SERVER; {len(rows['rest_list'])} sequential requests; "
                   f"list query {query!r}",
                   f"the same query through Temporal: all {total} rows p50 {p(temporal_list, 50)}; one page of 100 rows "
                   f"p50 {p(rows['temporal_list_page_100'], 50)} / p99 {p(rows['temporal_list_page_100'], 99)}; "
                   f"count_workflows p50 {p(rows['temporal_count'], 50)}",
                   f"every page through the API (page_size 1000, following next_page_token): "
                   f"p50 {p(rows['rest_list_all_pages'], 50)}", burst, contention],
        ))
        bench.add(Row(
            "P5a", f"GET /metrics (a Prometheus scrape: visibility counts by status and engine), {label}",
            f"p99 <= {ms(READ_P99_TARGET_S)}",
            f"p50 {p(rows['rest_metrics'], 50)} / p99 {p(rows['rest_metrics'], 99)}", "-", "-",
            passed=percentile(rows["rest_metrics"], 99) <= READ_P99_TARGET_S,
            notes=[f"{len(rows['rest_metrics'])} sequential scrapes, each {METRICS_CACHE_S + 0.05:g} s after the last, "
                   "so that each one starts a new round of visibility counts in the background (one count per "
                   "status, one per engine of each status that has deployments: berth.api.facade.counts) and "
                   "answers with the round the scrape before started"],
        ))
        bench.add(Row(
            "P5a", f"status read GET /v1/deployments/NAME (a DEPLOYED one), {label}", f"p99 <= {ms(READ_P99_TARGET_S)}",
            f"p50 {p(rows['rest_get'], 50)} / p99 {p(rows['rest_get'], 99)}",
            f"state query: p50 {p(rows['state_query'], 50)} / p99 {p(rows['state_query'], 99)}", "-",
            passed=percentile(rows["rest_get"], 99) <= READ_P99_TARGET_S,
        ))
    else:
        bench.add(Row(
            "P5a", f"list deployments, {label} (no API: Temporal list_workflows)", f"p99 <= {ms(READ_P99_TARGET_S)}",
            f"p50 {p(temporal_list, 50)} / p99 {p(temporal_list, 99)}", "-", "-",
            passed=percentile(temporal_list, 99) <= READ_P99_TARGET_S,
            values=common | {k: summary(v) | {"samples": None} for k, v in rows.items()},
            notes=[f"STAND-IN ENGINE (bench/standin_engine.py), launched by berth's pipeline; no API answered on "
                   f"BERTH_API_PORT, so the API's query {query!r} was timed through Temporal's list_workflows", burst, contention],
        ))
    if "console_first_page" in rows:
        bench.add(console_row(bench, label, rows, []))
    bench.add(Row(
        "P5a", f"status read (`state` query of a DEPLOYED one), {label}", f"p99 <= {ms(READ_P99_TARGET_S)}",
        f"p50 {p(rows['state_query'], 50)} / p99 {p(rows['state_query'], 99)}", "-", "-",
        passed=percentile(rows["state_query"], 99) <= READ_P99_TARGET_S,
    ))
    cp = {k: v for k, v in load.items() if k != "engines"}
    bench.add(Row(
        "P5a", f"{reached} stand-in deployments, {window} in flight: requests -> DEPLOYED", "(none)",
        f"{secs(all_deployed_s)} ({deployed}/{reached} DEPLOYED)", "-", f"{deployed / all_deployed_s:.1f} deployments/s", passed=None,
        notes=[f"{window} in flight at a time; new deployments were started for {secs(requested_s)} "
               f"(time budget {deploy_budget_s} s{', which ran out before N' if reached < asked else ''}); status counts {statuses}; "
               f"memory would fit {fit}; with {reached} supervised: "
               + ", ".join(f"{k} {v['cpu_percent']:.0f}% CPU {v['rss_mb']:.0f} MB" for k, v in cp.items())
               + f"; engines {load.get('engines', {}).get('rss_mb', 0):.0f} MB RSS; {history_events} history events each",
               f"supervising costs the worker {load.get('worker', {}).get('cpu_percent', 0) / max(1, deployed):.2f}% of a core "
               f"and Temporal {load.get('temporal', {}).get('cpu_percent', 0) / max(1, deployed):.2f}% per DEPLOYED deployment "
               "(30 s average: a health probe every 5 s, heartbeats, one reconcile pass)",
               "per deployment, where the time goes (median of 20, history): " + describe_breakdown(where, 10)]
        + ([f"not DEPLOYED, e.g.: {failures}"] if failures else []),
    ))


async def _why_not_deployed(client, query: str) -> list[str]:
    """Distinct errors of up to 20 deployments that are FAILED or in ERROR."""
    seen: dict[str, None] = {}
    count = 0
    async for execution in client.list_workflows(f"{query} AND BerthStatus IN ('FAILED', 'ERROR')", limit=20):
        count += 1
        with contextlib.suppress(Exception):
            state = await query_state(client, execution.id.removeprefix("deployment-"))
            if state.error:
                seen[f"{state.error.code.value}: {state.error.message[:150]}"] = None
    return list(seen)[:3]


PARKED_QUEUE = "bench-parked"  # no worker polls it


async def park(client, count: int, model: Path) -> int:
    """Start `count` more deployment workflows on a task queue that no worker polls: real workflows
    of the deployment type in Temporal, REQUESTED (as berth's own search attributes say), each one a
    row of `GET /v1/deployments`, with no engine and no worker time. Used so that the list is timed
    with N rows even where this machine cannot bring N stand-ins to DEPLOYED within the time budget."""
    if count <= 0:
        return 0
    attributes = TypedSearchAttributes([
        SearchAttributePair(SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE), DeploymentStatus.REQUESTED.value),
        SearchAttributePair(SearchAttributeKey.for_keyword(MODEL_ATTRIBUTE), str(model)),
    ])
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        name = f"parked-{i:04d}"
        async with gate:
            await client.start_workflow(
                WORKFLOW_TYPE, DeploymentInput(spec=spec(name, model)), id=workflow_id(name),
                task_queue=PARKED_QUEUE, search_attributes=attributes,
            )

    await asyncio.gather(*(one(i) for i in range(count)))
    return count


async def _list_all(client, query: str) -> int:
    count = 0
    async for _ in client.list_workflows(query):
        count += 1
    return count
