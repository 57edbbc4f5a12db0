"""`python -m bench.instance_shape [--quick] [--out bench/results/instance_shape.json]`

Instance shape A/B (issue 20): the orchestration cost of running a deployment's instances as
asyncio tasks inside one workflow (shape T, what berth does: berth.workflows.instance_runner)
against one child InstanceWorkflow per instance under a parent deployment workflow (shape C), on a
real `temporal server start-dev` (started as `berth up` starts it: berth.worker.temporal_server)
with real Temporal Python workers in this process.

Both shapes run the same stand-in activities with berth's own activity options
(berth.workflows.activity_options) on the same two workers, set up as berth's worker sets up its
own: a control worker (the workflows of both shapes and the local activity) and a node worker (the
node's activities). Per instance: reserve (a local activity, as berth's placement is) -> prepare
files beside the port -> launch -> ready; then the instance serves: the deployment workflow runs the
`route` activity with the serving set (T: the instance task calls it; C: the child signals the
parent "serving", the parent calls it); then the instance's long `supervise` activity (heartbeats;
it returns when the bench says the engine died, or is cancelled on a scale down). Scale is an
Update {"replicas": N}; a scale down takes the newest instance out of the route, then cancels its
supervise (T: cancels its task; C: signals the child, which cancels its own) and runs stop_engine.
An engine death: out of the route (not awaited, in either shape: C could not await it without one
more signal back), stop_engine, then the pipeline again (no backoff).

Measured, alternating T and C so that the machine's noise hits both alike: deploy latency (start ->
all N instances in the gateway's route) for N = 1, 3, 8; scale 1 -> 3 and 3 -> 1; a burst of 50
deployments x 2 at once (wall time, and Temporal's and this process's CPU seconds); history events
and bytes after deploy 3 + scale to 1 (parent + children for C); a failed instance's replacement;
a worker restart with 10 x 3 serving. Every "routed", "supervising" and "stopped" is seen by the
stand-in activities themselves as they run (the gateway's view), not by polling a query.

The worker restart: once every execution is idle (no workflow task pending, from describe), both
workers are shut down (their run tasks cancelled: the supervise activities fail with "worker is
shutting down" and Temporal schedules their retry) and new ones started; the time runs from the new
workers' start until every supervise stand-in runs again on them (each records the worker generation
that runs it). Retrying an activity needs no workflow task, so no workflow has replayed by then:
a query to every execution (T: 1 per deployment; C: the parent and each child) then makes the new
worker replay each one from its history, timed apart.

The checks (printed, and the run fails if one does not hold): T's history has no child and its own
supervise activities, C's parent none and 3 children; the scale to 1 cancelled 2 supervise (the
ActivityTaskCancelRequested events) and ran stop_engine for each, and C's retired children
completed; visibility lists C's children by the ShapeDeployment search attribute; every killed
engine shows as a restart in the workflow that ran it; every supervise came back as a retry.

NOT measured: the real activities' own costs (copying files, launching and loading engines,
Traefik), the cluster workflow's reserve updates (reserve is a local activity that answers at once:
each instance makes the same one update in either shape, so it adds the same to both and would only
make the cluster workflow the bottleneck of the burst), berth's status search-attribute upserts,
the drain before a scale down's stop, restart backoffs, continue-as-new, and the API in front.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import psutil
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey, TypedSearchAttributes
from temporalio.exceptions import ActivityError
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from berth.settings import Settings
from berth.testing.harness import free_port
from berth.worker.temporal_server import temporal_argv, temporal_env
from berth.workflows import activity_options as options

# ---- what the stand-ins cost, and the run's sizes ---------------------------------------------

ACTIVITY_S = 0.0  # each stand-in activity returns at once: only the orchestration is measured
SUPERVISE_TICK_S = 5.0  # supervise heartbeats this often (the SDK sends one per 0.8 x 60 s at most)
READY_TIMEOUT_S = 60  # the spec's startup timeout given to await_ready's options
SEARCH_ATTRIBUTE = "ShapeDeployment"  # a Keyword naming a child's deployment (shape C)
DEPLOYMENT_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTRIBUTE)
CONTROL_QUEUE = "shape-control"
NODE_QUEUE = "shape-node"
WAIT_S = 120  # no single wait of the bench takes longer: beyond it, the run fails with what it saw
SIZES = (1, 3, 8)
BURST = (50, 2)
RESTART = (10, 3)

# ---- the gateway's and the node's view: the stand-in activities write here --------------------


class Board:
    """What the stand-in activities saw, in this process: routes per deployment ({instance: port}),
    the supervise activities running ({(deployment, instance): ...}), the engines stopped. Waiters
    are resolved by the activity that makes their condition true, at that moment."""

    def __init__(self) -> None:
        self.routes: dict[str, dict[str, int]] = {}
        self.supervising: dict[tuple[str, str], dict] = {}
        self.stopped: list[tuple[str, str]] = []
        self.instances: dict[str, set[str]] = {}
        self.generation = 0  # bumped at each worker start
        self._waits: list[tuple[Callable[[], bool], asyncio.Future]] = []

    def changed(self) -> None:
        now = time.perf_counter()
        for entry in list(self._waits):
            condition, future = entry
            if not future.done() and condition():
                future.set_result(now)
                self._waits.remove(entry)

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> float:
        """perf_counter() at the moment `condition` became true."""
        if condition():
            return time.perf_counter()
        future = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waits.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}") from None
        finally:
            if entry in self._waits:
                self._waits.remove(entry)

    def release(self, deployment: str) -> None:
        """The deployment was terminated: its supervise stand-ins end (their results go nowhere)."""
        for (name, _), entry in list(self.supervising.items()):
            if name == deployment and not entry["end"].done():
                entry["end"].set_result("released")

    def kill_engine(self, deployment: str, instance: str) -> None:
        entry = self.supervising[(deployment, instance)]
        entry["end"].set_result("engine died")


BOARD = Board()
_ports = itertools.count(30000)
_pids = itertools.count(1000)


async def _cost() -> None:
    if ACTIVITY_S:
        await asyncio.sleep(ACTIVITY_S)


@activity.defn(name="reserve")
async def reserve(deployment: str, instance: str) -> str:
    BOARD.instances.setdefault(deployment, set()).add(instance)
    await _cost()
    return "node-1"


@activity.defn(name="prepare_files")
async def prepare_files(deployment: str, instance: str) -> str:
    await _cost()
    return f"/models/{deployment}"


@activity.defn(name="allocate_port")
async def allocate_port(deployment: str, instance: str) -> int:
    await _cost()
    return next(_ports)  # a new port per launch: the route shows which launch it points at


@activity.defn(name="launch_engine")
async def launch_engine(deployment: str, instance: str, port: int) -> int:
    await _cost()
    return next(_pids)


@activity.defn(name="await_ready")
async def await_ready(deployment: str, instance: str, port: int) -> bool:
    await _cost()
    return True


@activity.defn(name="route")
async def route(deployment: str, servers: list[list]) -> None:
    await _cost()
    BOARD.routes[deployment] = {instance: port for instance, port in servers}
    BOARD.changed()


@activity.defn(name="supervise")
async def supervise(deployment: str, instance: str, port: int) -> str:
    """Runs while the engine serves: returns "engine died" when the bench says so."""
    key = (deployment, instance)
    end = asyncio.get_running_loop().create_future()
    entry = {"generation": BOARD.generation, "attempt": activity.info().attempt, "port": port, "end": end}
    BOARD.supervising[key] = entry
    BOARD.changed()
    try:
        while True:
            done, _ = await asyncio.wait({end}, timeout=SUPERVISE_TICK_S)
            if done:
                return end.result()
            activity.heartbeat()
    finally:
        if BOARD.supervising.get(key) is entry:
            del BOARD.supervising[key]


@activity.defn(name="stop_engine")
async def stop_engine(deployment: str, instance: str) -> None:
    await _cost()
    BOARD.stopped.append((deployment, instance))
    BOARD.changed()


NODE_ACTIVITIES = [prepare_files, allocate_port, launch_engine, await_ready, route, supervise, stop_engine]

# ---- what both shapes share: the pipeline of one instance, the route ---------------------------


async def pipeline(deployment: str, instance: str) -> int:
    """reserve -> files beside the port -> launch -> ready (as berth.workflows.instance_runner)."""
    await workflow.execute_local_activity(reserve, args=[deployment, instance], **options.LOCAL_QUICK)
    _, port = await asyncio.gather(
        workflow.execute_activity(prepare_files, args=[deployment, instance], task_queue=NODE_QUEUE,
                                  **options.PREPARE_FILES),
        workflow.execute_activity(allocate_port, args=[deployment, instance], task_queue=NODE_QUEUE, **options.QUICK),
    )
    await workflow.execute_activity(launch_engine, args=[deployment, instance, port], task_queue=NODE_QUEUE,
                                    **options.QUICK)
    await workflow.execute_activity(await_ready, args=[deployment, instance, port], task_queue=NODE_QUEUE,
                                    **options.await_ready(READY_TIMEOUT_S))
    return port


async def watch(deployment: str, instance: str, port: int) -> str:
    return await workflow.execute_activity(supervise, args=[deployment, instance, port], task_queue=NODE_QUEUE,
                                           **options.SUPERVISE)


async def stop(deployment: str, instance: str) -> None:
    await workflow.execute_activity(stop_engine, args=[deployment, instance], task_queue=NODE_QUEUE,
                                    **options.TEARDOWN)


class Routed:
    """The deployment's side: the desired count and the route (one change at a time, each sent
    only when it differs from the last: berth.workflows.deployment_cluster.sync_route)."""

    def _setup(self, spec: dict) -> None:
        self.name: str = spec["name"]
        self.desired: int = spec["replicas"]
        self.servers: dict[str, int] = {}  # serving instances and their ports
        self.leaving: set[str] = set()
        self._sent: list | None = None
        self._route_lock = asyncio.Lock()
        self._wake = False
        self._serial = 0
        self._background: set[asyncio.Task] = set()

    def _next_instance(self) -> str:
        self._serial += 1
        return f"i{self._serial}"

    def _in_background(self, work) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @workflow.update(name="scale")
    async def scale(self, request: dict) -> int:
        """The same Update in both shapes: the desired count; the shape's loop converges to it."""
        self.desired = int(request["replicas"])
        self._wake = True
        return self.desired

    async def sync_route(self) -> None:
        async with self._route_lock:
            want = sorted([instance, port] for instance, port in self.servers.items() if instance not in self.leaving)
            if want == self._sent:
                return
            await workflow.execute_activity(route, args=[self.name, want], task_queue=NODE_QUEUE, **options.ROUTE)
            self._sent = want


# ---- shape T: one workflow, an asyncio task per instance ---------------------------------------


@workflow.defn(name="ShapeTDeployment")
class TasksDeployment(Routed):
    @workflow.init
    def __init__(self, spec: dict) -> None:
        self._setup(spec)
        self.tasks: dict[str, asyncio.Task] = {}
        self.restarts = 0

    @workflow.query(name="servers")
    def query_servers(self) -> dict:
        return {"servers": self.servers, "restarts": self.restarts}

    @workflow.run
    async def run(self, spec: dict) -> None:
        while True:
            self._wake = False
            while len(self.tasks) > self.desired:
                await self._retire(list(self.tasks)[-1])
            while len(self.tasks) < self.desired:
                instance = self._next_instance()
                self.tasks[instance] = asyncio.ensure_future(self._instance(instance))
            await workflow.wait_condition(lambda: self._wake)

    async def _instance(self, instance: str) -> None:
        while True:
            port = await pipeline(self.name, instance)
            self.servers[instance] = port
            await self.sync_route()
            await watch(self.name, instance, port)
            # the engine died: out of the route, its remains stopped, launched again
            self.restarts += 1
            self.servers.pop(instance, None)
            self._in_background(self.sync_route())
            await stop(self.name, instance)

    async def _retire(self, instance: str) -> None:
        self.leaving.add(instance)
        self.servers.pop(instance, None)
        await self.sync_route()
        task = self.tasks.pop(instance)
        task.cancel()  # its supervise (or the step it is in) is cancelled
        try:
            await task
        except (asyncio.CancelledError, ActivityError):
            pass
        await stop(self.name, instance)
        self.leaving.discard(instance)


# ---- shape C: a parent per deployment, a child InstanceWorkflow per instance -------------------


@workflow.defn(name="ShapeCInstance")
class InstanceWorkflow:
    @workflow.init
    def __init__(self, args: dict) -> None:
        self.deployment: str = args["deployment"]
        self.instance: str = args["instance"]
        self.retiring = False
        self.port: int | None = None
        self.restarts = 0
        self._pass: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    @workflow.signal(name="retire")
    def retire(self) -> None:
        self.retiring = True
        if self._pass is not None and not self._pass.done():
            self._pass.cancel()

    @workflow.query(name="servers")
    def query_port(self) -> dict:
        return {"port": self.port, "restarts": self.restarts}

    def _tell_parent(self, parent, name: str, args: list) -> None:
        """A signal to the parent, not awaited: the child goes on in the same workflow task."""
        async def send() -> None:
            try:
                await parent.signal(name, args=args)
            except Exception:  # noqa: BLE001 - the parent is gone (terminated): nothing to tell
                pass
        task = asyncio.ensure_future(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _one_pass(self, parent) -> str:
        self.port = await pipeline(self.deployment, self.instance)
        self._tell_parent(parent, "serving", [self.instance, self.port])
        return await watch(self.deployment, self.instance, self.port)

    @workflow.run
    async def run(self, args: dict) -> dict:
        parent = workflow.get_external_workflow_handle(args["parent"])
        while not self.retiring:
            self._pass = asyncio.ensure_future(self._one_pass(parent))
            try:
                await self._pass
            except (asyncio.CancelledError, ActivityError):
                if not self.retiring:
                    raise
                break
            # the engine died: the parent takes it out of the route; its remains stopped; launched again
            self.restarts += 1
            self.port = None
            self._tell_parent(parent, "down", [self.instance])
            await stop(self.deployment, self.instance)
        await stop(self.deployment, self.instance)
        return {"restarts": self.restarts}


@workflow.defn(name="ShapeCDeployment")
class ChildrenDeployment(Routed):
    @workflow.init
    def __init__(self, spec: dict) -> None:
        self._setup(spec)
        self.children: dict[str, Any] = {}  # instance -> ChildWorkflowHandle (None while starting)

    @workflow.query(name="servers")
    def query_servers(self) -> dict:
        return {"servers": self.servers, "children": list(self.children)}

    @workflow.signal(name="serving")
    async def serving(self, instance: str, port: int) -> None:
        if instance in self.children and instance not in self.leaving:
            self.servers[instance] = port
            await self.sync_route()

    @workflow.signal(name="down")
    async def down(self, instance: str) -> None:
        if self.servers.pop(instance, None) is not None:
            await self.sync_route()

    @workflow.run
    async def run(self, spec: dict) -> None:
        while True:
            self._wake = False
            while len(self.children) > self.desired:
                await self._retire(list(self.children)[-1])
            new = []
            while len(self.children) < self.desired:
                instance = self._next_instance()
                self.children[instance] = None
                new.append(instance)
            await asyncio.gather(*(self._start_child(instance) for instance in new))
            await workflow.wait_condition(lambda: self._wake)

    async def _start_child(self, instance: str) -> None:
        self.children[instance] = await workflow.start_child_workflow(
            InstanceWorkflow.run,
            {"deployment": self.name, "instance": instance, "parent": workflow.info().workflow_id},
            id=f"{self.name}-{instance}",
            task_queue=CONTROL_QUEUE,
            search_attributes=TypedSearchAttributes([DEPLOYMENT_KEY.value_set(self.name)]),
        )

    async def _retire(self, instance: str) -> None:
        self.leaving.add(instance)
        self.servers.pop(instance, None)
        await self.sync_route()
        child = self.children[instance]
        await child.signal(InstanceWorkflow.retire)  # it cancels its supervise, stops its engine, ends
        await child
        del self.children[instance]
        self.leaving.discard(instance)


SHAPES = {"T": TasksDeployment, "C": ChildrenDeployment}

# ---- the server and the workers -----------------------------------------------------------------


class Server:
    """`temporal server start-dev` with berth's own arguments (SQLite file, queue reader rates, one
    partition per queue), plus the Keyword search attribute of shape C, on free ports."""

    def __init__(self, home: Path) -> None:
        env = {"BERTH_HOME": str(home), "BERTH_TEMPORAL_PORT": str(free_port()), "BERTH_UI_PORT": str(free_port()),
               "BERTH_TEMPORAL_METRICS_PORT": "0"}
        self.settings = Settings.from_env(env)
        self.argv = temporal_argv(self.settings) + ["--search-attribute", f"{SEARCH_ATTRIBUTE}=Keyword"]
        self.process: subprocess.Popen | None = None

    async def start(self) -> Client:
        # the SDK core's own warnings go through Python's logging (and its filter: _QuietTerminated)
        runtime = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=logging.getLogger("temporal_core")))))
        self.process = subprocess.Popen(self.argv, env={**os.environ, **temporal_env()},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                return await Client.connect(f"127.0.0.1:{self.settings.temporal_port}", runtime=runtime)
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"temporal did not come up: {' '.join(self.argv)}")
                await asyncio.sleep(0.1)

    def cpu_s(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Workers:
    """berth's two workers (berth.worker.main): control (workflows, the local activity) and node."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        BOARD.generation += 1
        control = Worker(
            self.client, task_queue=CONTROL_QUEUE,
            workflows=[TasksDeployment, ChildrenDeployment, InstanceWorkflow], activities=[reserve],
            workflow_runner=UnsandboxedWorkflowRunner(),
            graceful_shutdown_timeout=timedelta(seconds=2),
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
        )
        node = Worker(self.client, task_queue=NODE_QUEUE, activities=NODE_ACTIVITIES, max_concurrent_activities=4000,
                      graceful_shutdown_timeout=timedelta(seconds=2))
        self.tasks = [asyncio.create_task(worker.run()) for worker in (control, node)]
        await asyncio.sleep(0)

    async def kill(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _busy_s() -> float:
    """The whole machine's non-idle CPU seconds since boot."""
    times = psutil.cpu_times()
    return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq", "steal"))


def process_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


# ---- the bench ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, client: Client, server: Server, workers: Workers, quick: bool) -> None:
        self.client, self.server, self.workers, self.quick = client, server, workers, quick
        self.raw: dict[str, dict[str, Any]] = {"T": {}, "C": {}}
        self.checks: list[str] = []
        self._serial = itertools.count(1)

    def put(self, shape: str, metric: str, value: Any) -> None:
        self.raw[shape].setdefault(metric, []).append(value)

    def check(self, ok: bool, what: str) -> None:
        self.checks.append(("ok   " if ok else "FAIL ") + what)
        print(("  check ok: " if ok else "  CHECK FAILED: ") + what, flush=True)
        if not ok:
            raise AssertionError(what)

    def new_name(self, shape: str, what: str) -> str:
        return f"{shape.lower()}-{what}-{next(self._serial)}"

    async def start(self, shape: str, name: str, replicas: int) -> float:
        started = time.perf_counter()
        await self.client.start_workflow(SHAPES[shape].run, {"name": name, "replicas": replicas}, id=name,
                                         task_queue=CONTROL_QUEUE)
        return started

    def routed(self, name: str, n: int) -> Callable[[], bool]:
        return lambda: len(BOARD.routes.get(name, {})) == n

    def supervised(self, name: str, n: int) -> Callable[[], bool]:
        return lambda: sum(1 for (each, _) in BOARD.supervising if each == name) == n

    async def teardown(self, shape: str, names: list[str]) -> None:
        """Terminate (children go with their parent: the default parent close policy), end the
        stand-ins' supervise, and wait until every execution of these deployments is closed."""
        async def one(name: str) -> None:
            try:
                await self.client.get_workflow_handle(name).terminate("bench: done")
            except RPCError:
                pass
            BOARD.release(name)
            ids = [name] + ([f"{name}-{i}" for i in BOARD.instances.get(name, ())] if shape == "C" else [])
            for workflow_id in ids:
                while True:
                    try:
                        described = await self.client.get_workflow_handle(workflow_id).describe()
                    except RPCError:
                        break
                    if described.status != WorkflowExecutionStatus.RUNNING:
                        break
                    await asyncio.sleep(0.05)
        await asyncio.gather(*(one(name) for name in names))
        for name in names:
            BOARD.routes.pop(name, None)
        await asyncio.sleep(0.3)  # the server's own follow-up (visibility, transfer tasks)

    async def quiet(self, ids: list[str]) -> None:
        """Until no execution of `ids` has a workflow task pending, twice in a row 0.1 s apart."""
        calm = 0
        deadline = time.monotonic() + WAIT_S
        while calm < 2:
            described = await asyncio.gather(*(self.client.get_workflow_handle(wid).describe() for wid in ids))
            busy = sum(1 for each in described if each.raw_description.HasField("pending_workflow_task"))
            calm = calm + 1 if busy == 0 else 0
            if time.monotonic() > deadline:
                raise RuntimeError(f"{busy} executions still have a workflow task pending")
            await asyncio.sleep(0.1)

    # 1. deploy latency
    async def deploy(self, repeats: int) -> None:
        for shape in ("T", "C"):  # a warm-up of each, not counted
            name = self.new_name(shape, "warm")
            await self.start(shape, name, 3)
            await BOARD.until(self.routed(name, 3), f"{name} routed")
            await self.teardown(shape, [name])
        for _ in range(repeats):
            for n in SIZES:
                for shape in ("T", "C"):
                    name = self.new_name(shape, f"deploy{n}")
                    cpu = self.server.cpu_s(), process_cpu_s()
                    started = await self.start(shape, name, n)
                    routed = await BOARD.until(self.routed(name, n), f"{name}: {n} routed")
                    await BOARD.until(self.supervised(name, n), f"{name}: {n} supervised")
                    self.put(shape, f"deploy_{n}_s", routed - started)
                    self.put(shape, f"deploy_{n}_cpu_s", self.server.cpu_s() - cpu[0] + process_cpu_s() - cpu[1])
                    await self.teardown(shape, [name])
            print(f"  deploy: round done ({_summary(self.raw)})", flush=True)

    # 2. scale 1 -> 3 -> 1
    async def scale(self, repeats: int) -> None:
        for _ in range(repeats):
            for shape in ("T", "C"):
                name = self.new_name(shape, "scale")
                await self.start(shape, name, 1)
                await BOARD.until(self.routed(name, 1), f"{name}: 1 routed")
                handle = self.client.get_workflow_handle(name)
                sent = time.perf_counter()
                await handle.execute_update("scale", {"replicas": 3})
                up = await BOARD.until(self.routed(name, 3), f"{name}: 3 routed")
                await BOARD.until(self.supervised(name, 3), f"{name}: 3 supervised")
                extra = sorted(BOARD.routes[name])[1:]  # i2, i3: the newest go first
                stopped_before = len(BOARD.stopped)
                sent_down = time.perf_counter()
                await handle.execute_update("scale", {"replicas": 1})

                def gone() -> bool:
                    stopped = set(BOARD.stopped[stopped_before:])
                    return len(BOARD.routes[name]) == 1 and all((name, i) in stopped for i in extra)
                down = await BOARD.until(gone, f"{name}: {extra} out of the route and stopped")
                self.put(shape, "scale_1_3_s", up - sent)
                self.put(shape, "scale_3_1_s", down - sent_down)
                await self.teardown(shape, [name])

    # 4. history after deploy 3 + scale to 1; the checks that each shape is what it claims
    async def history(self, rounds: int) -> None:
        for shape in [shape for _ in range(rounds) for shape in ("T", "C")]:
            name = self.new_name(shape, "history")
            await self.start(shape, name, 3)
            await BOARD.until(self.routed(name, 3), f"{name}: 3 routed")
            await BOARD.until(self.supervised(name, 3), f"{name}: 3 supervised")
            handle = self.client.get_workflow_handle(name)
            stopped_before = len(BOARD.stopped)
            await handle.execute_update("scale", {"replicas": 1})
            await BOARD.until(lambda: len(BOARD.stopped) - stopped_before == 2 and self.routed(name, 1)(),
                              f"{name}: scaled to 1")
            ids = [name] + ([f"{name}-i{i}" for i in (1, 2, 3)] if shape == "C" else [])
            histories = await self._settled_histories(ids)
            sizes = {wid: (len(events), sum(event.ByteSize() for event in events)) for wid, events in histories.items()}
            every = [event for events in histories.values() for event in events]
            figures = {
                "executions": len(ids),
                "events": sum(events for events, _ in sizes.values()),
                "bytes": sum(size for _, size in sizes.values()),
                "workflow_tasks": _count(every, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
                "activities_scheduled": _count(every, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED),
                "signals_sent": _count(every, EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED),
                "parent_events": sizes[name][0],
                "parent_bytes": sizes[name][1],
                "per_execution": {wid: {"events": e, "bytes": b} for wid, (e, b) in sizes.items()},
            }
            self.put(shape, "history", figures)
            print(f"  history {shape}: {figures['executions']} executions, {figures['events']} events, "
                  f"{figures['bytes']} bytes", flush=True)
            await self._check_shape(shape, name, histories)
            await self.teardown(shape, [name])

    async def _settled_histories(self, ids: list[str]) -> dict[str, list]:
        """Each history once it stops growing (the last workflow tasks after the scale down)."""
        last: dict[str, int] = {}
        while True:
            histories = {wid: (await self.client.get_workflow_handle(wid).fetch_history()).events for wid in ids}
            lengths = {wid: len(events) for wid, events in histories.items()}
            if lengths == last:
                return histories
            last = lengths
            await asyncio.sleep(0.5)

    async def _check_shape(self, shape: str, name: str, histories: dict[str, list]) -> None:
        parent = histories[name]
        if shape == "T":
            self.check(_count(parent, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED) == 0
                       and _scheduled(parent, "supervise") == 3,
                       f"T {name}: one execution, no child started, its 3 supervise in its own history")
            self.check(_cancelled(parent, "supervise") == 2 and _scheduled(parent, "stop_engine") == 2,
                       f"T {name}: the scale to 1 cancelled 2 supervise activities and ran stop_engine twice")
            return
        self.check(_count(parent, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED) == 3
                   and _scheduled(parent, "supervise") == 0,
                   f"C {name}: the parent started 3 children and ran no supervise itself")
        retired = [f"{name}-i2", f"{name}-i3"]
        self.check(all(_cancelled(histories[wid], "supervise") == 1 and _scheduled(histories[wid], "stop_engine") == 1
                       and histories[wid][-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
                       for wid in retired),
                   f"C {name}: each retired child cancelled its supervise, ran stop_engine and completed")
        query = f'{SEARCH_ATTRIBUTE}="{name}"'
        found: list = []
        for _ in range(100):  # visibility follows ~1-2 s later
            found = [each async for each in self.client.list_workflows(query)]
            if len(found) == 3 and sum(1 for e in found if e.status == WorkflowExecutionStatus.RUNNING) == 1:
                break
            await asyncio.sleep(0.2)
        running = sorted(e.id for e in found if e.status == WorkflowExecutionStatus.RUNNING)
        self.check(len(found) == 3 and running == [f"{name}-i1"] and all(e.workflow_type == "ShapeCInstance" for e in found),
                   f"C {name}: visibility ({query}) lists 3 InstanceWorkflows, only {name}-i1 running")

    # 3. a burst
    async def burst(self, rounds: int) -> None:
        count, replicas = BURST
        for _ in range(rounds):
            for shape in ("T", "C"):
                names = [self.new_name(shape, "burst") for _ in range(count)]
                cpu = self.server.cpu_s(), process_cpu_s()
                started = time.perf_counter()
                await asyncio.gather(*(self.client.start_workflow(SHAPES[shape].run, {"name": n, "replicas": replicas},
                                                                  id=n, task_queue=CONTROL_QUEUE) for n in names))
                routed = await BOARD.until(lambda: all(self.routed(n, replicas)() for n in names), "the burst routed")
                await BOARD.until(lambda: all(self.supervised(n, replicas)() for n in names), "the burst supervised")
                self.put(shape, "burst_s", routed - started)
                self.put(shape, "burst_server_cpu_s", self.server.cpu_s() - cpu[0])
                self.put(shape, "burst_worker_cpu_s", process_cpu_s() - cpu[1])
                print(f"  burst {shape}: {routed - started:.2f} s", flush=True)
                await self.teardown(shape, names)

    # 5. a failed instance replaced
    async def replace(self, repeats: int) -> None:
        names = {}
        for shape in ("T", "C"):
            names[shape] = self.new_name(shape, "replace")
            await self.start(shape, names[shape], 3)
            await BOARD.until(self.routed(names[shape], 3), "3 routed")
            await BOARD.until(self.supervised(names[shape], 3), "3 supervised")
        for round_ in range(repeats):
            for shape in ("T", "C"):
                name = names[shape]
                instance = f"i{round_ % 3 + 1}"
                old_port = BOARD.routes[name][instance]
                killed = time.perf_counter()
                BOARD.kill_engine(name, instance)
                back = await BOARD.until(lambda: BOARD.routes[name].get(instance) not in (None, old_port),
                                         f"{name}/{instance} routed again")
                await BOARD.until(lambda: BOARD.supervising.get((name, instance), {}).get("port") not in (None, old_port),
                                  f"{name}/{instance} supervised again")
                self.put(shape, "replace_s", back - killed)
        for shape in ("T", "C"):
            state = await self.client.get_workflow_handle(names[shape]).query("servers")
            restarts = (state["restarts"] if shape == "T" else sum(
                [(await self.client.get_workflow_handle(f"{names[shape]}-i{i}").query("servers"))["restarts"]
                 for i in (1, 2, 3)]))
            self.check(restarts == repeats, f"{shape} {names[shape]}: {restarts} restarts recorded in the workflows "
                       f"({'its instance tasks' if shape == 'T' else 'the children'}), {repeats} engines killed")
        await self.teardown("T", [names["T"]])
        await self.teardown("C", [names["C"]])

    # 6. a worker restart
    async def worker_restart(self, rounds: int) -> None:
        count, replicas = RESTART
        for _ in range(rounds):
            for shape in ("T", "C"):
                names = [self.new_name(shape, "restart") for _ in range(count)]
                for name in names:
                    await self.start(shape, name, replicas)
                await BOARD.until(lambda: all(self.routed(n, replicas)() for n in names), "all routed")
                await BOARD.until(lambda: all(self.supervised(n, replicas)() for n in names), "all supervised")
                keys = [(n, i) for n in names for i in BOARD.routes[n]]
                ids = names + ([f"{n}-{i}" for n, i in keys] if shape == "C" else [])
                await self.quiet(ids)  # serving, and no workflow task in flight: a kill mid-task is another story
                killing = time.perf_counter()
                await self.workers.kill()
                killed = time.perf_counter()
                left = sum(1 for key in keys if key in BOARD.supervising)
                await self.workers.start()
                started = time.perf_counter()
                generation = BOARD.generation
                back = await BOARD.until(
                    lambda: all(BOARD.supervising.get(key, {}).get("generation") == generation for key in keys),
                    "every supervise running again on the new worker")
                attempts = sorted({BOARD.supervising[key]["attempt"] for key in keys})
                # then every execution answers a query: the new worker replays each one from its history
                await asyncio.gather(*(self.client.get_workflow_handle(wid).query("servers") for wid in ids))
                replayed = time.perf_counter()
                self.put(shape, "restart_kill_s", killed - killing)
                self.put(shape, "restart_supervise_back_s", back - started)
                self.put(shape, "restart_replay_all_s", replayed - back)
                self.put(shape, "restart_executions", len(ids))
                self.check(left == 0 and attempts and attempts[0] > 1,
                           f"{shape}: the kill ended all {len(keys)} supervise; each came back as a retry "
                           f"(attempts {attempts}) on worker generation {generation}")
                print(f"  restart {shape}: supervise back {back - started:.2f} s, {len(ids)} executions replayed "
                      f"{replayed - back:.2f} s", flush=True)
                await self.teardown(shape, names)


def _count(events: list, kind: int) -> int:
    return sum(1 for event in events if event.event_type == kind)


def _scheduled(events: list, activity_name: str) -> int:
    return sum(1 for event in events if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
               and event.activity_task_scheduled_event_attributes.activity_type.name == activity_name)


def _cancelled(events: list, activity_name: str) -> int:
    names = {event.event_id: event.activity_task_scheduled_event_attributes.activity_type.name
             for event in events if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED}
    return sum(1 for event in events if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED
               and names.get(event.activity_task_cancel_requested_event_attributes.scheduled_event_id) == activity_name)


def _summary(raw: dict) -> str:
    parts = []
    for n in SIZES:
        t, c = raw["T"].get(f"deploy_{n}_s"), raw["C"].get(f"deploy_{n}_s")
        if t and c:
            parts.append(f"N={n} T {statistics.median(t) * 1000:.0f} ms C {statistics.median(c) * 1000:.0f} ms")
    return ", ".join(parts)


# ---- the table ------------------------------------------------------------------------------------


def table(raw: dict) -> list[tuple[str, str, str, str, float | None, float | None]]:
    """(metric, T, C, C/T, t value, c value)."""
    rows = []

    def add(metric: str, t: float | None, c: float | None, unit: str) -> None:
        def show(v: float | None) -> str:
            if v is None:
                return "n/a"
            return {"ms": f"{v * 1000:.0f} ms", "s": f"{v:.2f} s", "n": f"{v:,.0f}"}[unit]
        ratio = f"{c / t:.2f}" if t and c is not None else "n/a"
        rows.append((metric, show(t), show(c), ratio, t, c))

    def stat(shape: str, key: str, how) -> float | None:
        samples = raw[shape].get(key)
        return how(samples) if samples else None

    for n in SIZES:
        key = f"deploy_{n}_s"
        runs = len(raw["T"].get(key, []))
        add(f"deploy N={n}: start -> {n} routed, p50 (x{runs})", stat("T", key, statistics.median),
            stat("C", key, statistics.median), "ms")
        add(f"deploy N={n}: max", stat("T", key, max), stat("C", key, max), "ms")
        add(f"deploy N={n}: server + worker CPU, p50", stat("T", f"deploy_{n}_cpu_s", statistics.median),
            stat("C", f"deploy_{n}_cpu_s", statistics.median), "ms")
    for key, metric in (("scale_1_3_s", "scale 1 -> 3: update -> 3 routed"),
                        ("scale_3_1_s", "scale 3 -> 1: update -> 2 out of route + stopped")):
        runs = len(raw["T"].get(key, []))
        add(f"{metric}, p50 (x{runs})", stat("T", key, statistics.median), stat("C", key, statistics.median), "ms")
    runs = len(raw["T"].get("burst_s", []))
    add(f"burst {BURST[0]} x {BURST[1]}: start -> all routed, p50 (x{runs})", stat("T", "burst_s", statistics.median),
        stat("C", "burst_s", statistics.median), "s")
    add("burst: Temporal server CPU", stat("T", "burst_server_cpu_s", statistics.median),
        stat("C", "burst_server_cpu_s", statistics.median), "s")
    add("burst: worker (+bench) process CPU", stat("T", "burst_worker_cpu_s", statistics.median),
        stat("C", "burst_worker_cpu_s", statistics.median), "s")
    if raw["T"].get("history") and raw["C"].get("history"):
        runs = len(raw["T"]["history"])
        for key, metric in (("executions", f"history (deploy 3, scale to 1; p50 of {runs}): executions"),
                            ("events", "history: events (sum)"), ("bytes", "history: bytes (sum)"),
                            ("workflow_tasks", "history: workflow tasks completed (sum)"),
                            ("signals_sent", "history: signals between workflows"),
                            ("parent_events", "history: the deployment workflow's own events"),
                            ("parent_bytes", "history: the deployment workflow's own bytes")):
            add(metric, *(statistics.median(h[key] for h in raw[shape]["history"]) for shape in ("T", "C")), "n")
    runs = len(raw["T"].get("replace_s", []))
    add(f"failed instance: engine died -> routed again, p50 (x{runs})", stat("T", "replace_s", statistics.median),
        stat("C", "replace_s", statistics.median), "ms")
    runs = len(raw["T"].get("restart_supervise_back_s", []))
    add(f"worker restart ({RESTART[0]} x {RESTART[1]}): new worker -> every supervise running, p50 (x{runs})",
        stat("T", "restart_supervise_back_s", statistics.median),
        stat("C", "restart_supervise_back_s", statistics.median), "ms")
    add("worker restart: then every execution replayed (a query each), p50",
        stat("T", "restart_replay_all_s", statistics.median), stat("C", "restart_replay_all_s", statistics.median), "ms")
    add("worker restart: executions replayed", stat("T", "restart_executions", max),
        stat("C", "restart_executions", max), "n")
    return rows


def print_table(rows) -> str:
    width = max(len(row[0]) for row in rows)
    lines = [f"{'metric':<{width}}  {'T (tasks)':>10}  {'C (children)':>12}  {'C/T':>5}",
             f"{'-' * width}  {'-' * 10}  {'-' * 12}  {'-' * 5}"]
    lines += [f"{m:<{width}}  {t:>10}  {c:>12}  {r:>5}" for m, t, c, r, _, _ in rows]
    text = "\n".join(lines)
    print(text)
    return text


def markdown(rows) -> str:
    lines = ["| metric | T (tasks) | C (children) | C/T |", "|---|---:|---:|---:|"]
    lines += [f"| {m} | {t} | {c} | {r} |" for m, t, c, r, _, _ in rows]
    return "\n".join(lines)


# ---- the run --------------------------------------------------------------------------------------


class _QuietTerminated(logging.Filter):
    """The teardown terminates workflows whose supervise stand-ins then end: their completion is
    refused (the workflow is gone). Counted, not printed."""

    dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "not found" in text.lower() or "NotFound" in text or "workflow execution already completed" in text.lower():
            _QuietTerminated.dropped += 1
            return False
        return True


async def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietTerminated())
    repeats = 2 if args.quick else 10
    rounds = 1 if args.quick else 3
    load = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="berth-shape-"))
    server = Server(home)
    started = time.perf_counter()
    print(f"instance shape A/B ({'quick' if args.quick else 'full'}): {os.cpu_count()} cores, load {load}; "
          f"temporal on 127.0.0.1:{server.settings.temporal_port}, db in {home}", flush=True)
    machine_busy, own_cpu = _busy_s(), process_cpu_s()
    client = await server.start()
    workers = Workers(client)
    await workers.start()
    bench = Bench(client, server, workers, args.quick)
    phases: dict[str, float] = {}
    try:
        for phase, step in (("deploy", lambda: bench.deploy(repeats)), ("scale", lambda: bench.scale(repeats)),
                            ("history", lambda: bench.history(rounds)), ("burst", lambda: bench.burst(rounds)),
                            ("replace", lambda: bench.replace(repeats)),
                            ("restart", lambda: bench.worker_restart(rounds))):
            began = time.perf_counter()
            print(f"{phase} ...", flush=True)
            await step()
            phases[phase] = round(time.perf_counter() - began, 1)
    finally:
        await workers.kill()
        server_cpu = server.cpu_s() if server.process else 0.0
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    runtime = time.perf_counter() - started
    others = _busy_s() - machine_busy - (process_cpu_s() - own_cpu) - server_cpu
    rows = table(bench.raw)
    print()
    print(f"machine: {os.cpu_count()} cores, load average at start {load}, at end {os.getloadavg()}; "
          f"runtime {runtime:.0f} s ({phases}); CPU used by other processes meanwhile: {others:.0f} s "
          f"({others / runtime / (os.cpu_count() or 1):.0%} of the machine)")
    text = print_table(rows)
    print(f"checks: {sum(1 for c in bench.checks if c.startswith('ok'))}/{len(bench.checks)} passed; "
          f"{_QuietTerminated.dropped} 'not found' log lines from terminated workflows dropped")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "quick": args.quick, "runtime_s": round(runtime, 1), "phases_s": phases, "cores": os.cpu_count(),
        "load_average_start": load, "load_average_end": os.getloadavg(), "other_processes_cpu_s": round(others, 1),
        "activity_s": ACTIVITY_S, "server_argv": server.argv[1:], "checks": bench.checks,
        "table": [{"metric": m, "T": t, "C": c, "C/T": r} for m, t, c, r, _, _ in rows],
        "table_text": text, "table_markdown": markdown(rows), "raw": bench.raw,
    }, indent=1, default=str))
    print(f"written: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instance_shape", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a smoke run (~2 min)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "instance_shape.json")
    return asyncio.run(run(parser.parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
