"""Stop a deployment in every status, against the real stack: each ends STOPPED within a few
seconds, with no engine process, no port reservation and no route left for it.

The statuses a tiny model passes through quickly (REQUESTED, DEPLOYING, INITIALIZING) are caught
by polling the `state` query every few milliseconds; which one a test really caught is in its
assertion messages (and printed: run with -s to see them with the stop's duration).
"""

import asyncio
import contextlib
import os
import signal
import time

import psutil
import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowQueryFailedError
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from berth.activities.placement import check_spec
from berth.node.ports import registry
from berth.domain.cluster import RELEASE_INSTANCE, RESERVE_INSTANCE, Placement, ReleaseRequest, ReserveRequest
from berth.domain.pipeline import (
    ALLOCATE_PORT,
    AWAIT_READY,
    CONFIGURE_ROUTE,
    LAUNCH_ENGINE,
    PREPARE_FILES,
    RELEASE_PORT,
    REMOVE_ROUTE,
    STOP_ENGINE,
    SUPERVISE,
    EngineChoice,
    EngineHandle,
    EngineOutcome,
    LaunchRequest,
    PortRequest,
    PreparedModel,
    PrepareFilesInput,
    ReadyRequest,
    RouteRequest,
    StopRequest,
)
from berth.domain.spec import DeploymentSpec, RestartPolicy
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus as S
from berth.domain.status import InstanceStatus
from berth.domain.temporal_names import (
    RETRY_SIGNAL,
    SEARCH_ATTRIBUTES,
    STATE_QUERY,
    STOP_SIGNAL,
    WORKFLOW_TYPE,
    workflow_id,
)
from berth.settings import CONTROL_TASK_QUEUE, node_task_queue
from berth.testing.harness import (
    deployment_state,
    engine_processes,
    processes_with_home,
    start_deployment,
    wait_for_status,
)
from berth.worker.temporal_server import temporal_binary
from berth.workflows.deployment import DeploymentInput, DeploymentWorkflow
from berth.node.routes import routed

STOP_WITHIN_S = 5  # "promptly": signal sent -> workflow closed STOPPED, on this 2-core machine
POLL_S = 0.003
# ERROR that waits far longer than the test: a stop must not wait for the backoff to end
LONG_BACKOFF = RestartPolicy(max_attempts=3, backoff_initial_s=30, backoff_max_s=30)


def left_of(stack, name: str) -> list[str]:
    """What is left of a deployment on the node: engine processes (and their wrappers), port
    reservations, its route file. Empty when nothing is left."""
    left = [f"engine pid {p.pid}: {p.cmdline()}" for p in engine_processes(stack.home, name)]
    for process in processes_with_home(stack.home):
        try:
            marker = process.environ().get("BERTH_INSTANCE_ID", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if marker.rsplit("-", 1)[0] == name and process.cmdline()[:1] == ["/bin/sh"]:
            left.append(f"engine wrapper pid {process.pid}")
    left += [
        f"port {port} reserved for {instance}"
        for instance, port in registry(stack.settings).reserved().items()
        if instance.rsplit("-", 1)[0] == name
    ]
    if name in routed(stack.settings.routes_dir):
        left.append(f"route of {name} in {stack.settings.routes_dir}")
    return left


async def stop_or_rescue(client, name: str) -> tuple[DeploymentState | None, float]:
    """Like stop_now, but give the stop STOP_WITHIN_S only; if it is lost, cancel the workflow
    through Temporal (its other way to stop) so that nothing is left running, and return None."""
    handle = client.get_workflow_handle(workflow_id(name), result_type=DeploymentState)
    started = time.monotonic()
    await handle.signal(STOP_SIGNAL)
    try:
        return await asyncio.wait_for(handle.result(), STOP_WITHIN_S), time.monotonic() - started
    except TimeoutError:
        took = time.monotonic() - started
    await handle.cancel()
    with contextlib.suppress(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), 30)
    return None, took


async def stop_now(client, name: str, caught: str = "") -> tuple[DeploymentState, float]:
    """Signal stop, wait for the workflow to close; its final state and how long that took.
    A stop not done within STOP_WITHIN_S is called lost: the workflow is then cancelled through
    Temporal (its other way to stop), so that nothing stays running, and the test fails."""
    final, took = await stop_or_rescue(client, name)
    assert final is not None, (
        f"the stop sent at {caught or 'start'} was lost: {name} was still running {took:.1f} s "
        "later (ended by a Temporal cancel)"
    )
    return final, took


def assert_stopped_clean(stack, name: str, final: DeploymentState, took_s: float, caught: str) -> None:
    where = f"stop sent at {caught}; took {took_s:.2f} s; transitions: " + " -> ".join(
        t.status.value for t in final.transitions
    )
    print(f"\n{name}: {where}")
    assert final.status is S.STOPPED, where
    assert all(instance.status is InstanceStatus.STOPPED for instance in final.instances), where
    assert final.pid is None and final.port is None and final.endpoint is None, where
    assert took_s < STOP_WITHIN_S, f"the stop was not prompt: {where}"
    left = left_of(stack, name)
    assert not left, f"left behind after the stop ({where}): {left}"


def caught_as(state: DeploymentState) -> str:
    instance = state.instances[0].status.value if state.instances else "no instance yet"
    return f"{state.status.value} (instance {instance}, port {state.port}, pid {state.pid})"


async def poll_until(client, name: str, predicate, timeout_s: float = 60) -> DeploymentState:
    """Query `state` every few ms until predicate(state) holds; the first state that matched."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = await deployment_state(client, name)
        except (WorkflowQueryFailedError, RPCError):  # no workflow task has run yet
            state = None
        if state is not None and predicate(state):
            return state
        assert time.monotonic() < deadline, f"{name}: never matched; last state {state}"
        await asyncio.sleep(POLL_S)


async def test_stop_right_after_start(stack, client, tiny_gguf, name):
    """REQUESTED / DEPLOYING: the stop signal follows start_workflow at once."""
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf)))
    final, took = await stop_now(client, name)
    before = [t.status for t in final.transitions if t.status is not S.STOPPED]
    caught = before[-1].value if before else "before the first transition"
    assert S.DEPLOYED not in before, f"it got to DEPLOYED before the stop was seen: {before}"
    assert_stopped_clean(stack, name, final, took, caught)


async def test_stop_while_initializing(stack, client, tiny_gguf, name):
    """Stop at first sight of INITIALIZING (await_ready running). The tiny model is quick: DEPLOYED
    may be caught instead, and the assertion messages say which one was."""
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf)))
    seen = await poll_until(client, name, lambda s: s.status in (S.INITIALIZING, S.DEPLOYED))
    final, took = await stop_now(client, name, caught_as(seen))
    assert_stopped_clean(stack, name, final, took, caught_as(seen))


def mid_launch(state: DeploymentState) -> bool:
    """DEPLOYING with a port reserved: configure_route, prepare_files or launch_engine is running (or a later status, when polling was too slow to see it)."""
    return state.status is S.DEPLOYING and state.port is not None or state.status in (
        S.INITIALIZING,
        S.DEPLOYED,
    )


async def test_stop_mid_launch(stack, client, tiny_gguf, name):
    """Stop at first sight of DEPLOYING with a port reserved (route, files or launch step).
    Tries a few deployments until one is caught in DEPLOYING; the others are stopped as well."""
    for attempt in range(4):
        this = f"{name}-{attempt}"
        await start_deployment(client, DeploymentSpec(name=this, model=str(tiny_gguf)))
        seen = await poll_until(client, this, mid_launch)
        try:
            final, took = await stop_now(client, this, caught_as(seen))
        finally:
            left = left_of(stack, this)
            assert not left, f"left behind after stopping {this} ({caught_as(seen)}): {left}"
        assert_stopped_clean(stack, this, final, took, caught_as(seen))
        if seen.status is S.DEPLOYING:
            return
    pytest.skip("polling never caught DEPLOYING with a port reserved")


async def test_stop_when_deployed(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf)))
    seen = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED})
    assert seen.status is S.DEPLOYED, seen.error
    assert left_of(stack, name), "a DEPLOYED deployment should hold an engine, a port and a route"
    final, took = await stop_now(client, name, caught_as(seen))
    assert_stopped_clean(stack, name, final, took, caught_as(seen))
    assert not psutil.pid_exists(seen.pid) or psutil.Process(seen.pid).status() == psutil.STATUS_ZOMBIE


async def test_stop_in_error_waiting_for_its_backoff(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), restart=LONG_BACKOFF))
    deployed = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED})
    assert deployed.status is S.DEPLOYED, deployed.error
    # the first automatic restart is immediate: crash it twice to have it wait out a backoff
    os.kill(deployed.pid, signal.SIGKILL)
    again = await poll_until(
        client, name, lambda state: state.status is S.FAILED or state.status is S.DEPLOYED and state.pid != deployed.pid, 20
    )
    assert again.status is S.DEPLOYED and again.attempts == 1, caught_as(again)
    os.kill(again.pid, signal.SIGKILL)
    seen = await wait_for_status(client, name, {S.ERROR, S.FAILED}, timeout_s=10)
    assert seen.status is S.ERROR and seen.next_retry_at is not None, caught_as(seen)
    assert (seen.next_retry_at - seen.transitions[-1].at).total_seconds() >= 29, "a 30 s backoff"
    final, took = await stop_now(client, name, caught_as(seen))
    assert_stopped_clean(stack, name, final, took, caught_as(seen))
    statuses = [t.status for t in final.transitions]
    assert statuses[-2:] == [S.ERROR, S.STOPPED], "it relaunched before stopping"


async def test_stop_when_failed(stack, client, garbage_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(garbage_gguf)))
    seen = await wait_for_status(client, name, {S.FAILED, S.DEPLOYED})
    assert seen.status is S.FAILED, caught_as(seen)
    final, took = await stop_now(client, name, caught_as(seen))
    assert_stopped_clean(stack, name, final, took, caught_as(seen))
    assert final.error is not None, "the failure that led to the stop is kept in the state"


async def test_stop_while_the_worker_is_down_completes_when_it_returns(stack, client, tiny_gguf, name):
    """SIGSTOP the worker (it runs the workflows and the node's activities): the stop signal is
    accepted by Temporal but nothing can act on it; on SIGCONT the stop completes, nothing left."""
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf)))
    deployed = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED})
    assert deployed.status is S.DEPLOYED, deployed.error
    handle = client.get_workflow_handle(workflow_id(name), result_type=DeploymentState)
    worker = stack.worker_pid()
    assert worker is not None
    os.kill(worker, signal.SIGSTOP)
    try:
        await handle.signal(STOP_SIGNAL)  # Temporal takes a signal with no worker up
        await asyncio.sleep(2)
        engines = [p.pid for p in engine_processes(stack.home, name)]
        assert engines == [deployed.pid], "the engine stopped although no worker could stop it"
        assert name in routed(stack.settings.routes_dir)
        description = await handle.describe()
        assert description.status.name == "RUNNING"
    finally:
        os.kill(worker, signal.SIGCONT)
    resumed = time.monotonic()
    final = await asyncio.wait_for(handle.result(), 30)
    took = time.monotonic() - resumed
    assert stack.worker_pid() == worker, "the worker was restarted: this test wanted it paused"
    assert_stopped_clean(stack, name, final, took, f"{caught_as(deployed)}, worker paused")


# ---- the same stop, step by step, with stand-in activities ---------------------------------------
#
# The real DeploymentWorkflow on a private Temporal dev server, its activities replaced by stand-ins
# that answer at once, except the one under test, which is held until the stop signal has been
# taken by the workflow (a `state` query answers only after the signal's workflow task). So the
# stop lands, every time, while that step runs: no timing luck involved.

HELD_STEPS = [
    ALLOCATE_PORT,
    PREPARE_FILES,  # also chooses the engine (select-with-files-v1) and plans the memory
    CONFIGURE_ROUTE,
    LAUNCH_ENGINE,
    AWAIT_READY,
]


class StandIns:
    """Activities under the pipeline's names; `held` blocks until `release` is set."""

    NODE = "standin"

    def __init__(self, held: str):
        self.held = held
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.stopped_engines: list[str] = []

    async def _maybe_hold(self, step: str) -> None:
        if step == self.held:
            self.entered.set()
            await self.release.wait()

    def activities(self) -> list:
        @activity.defn(name=RESERVE_INSTANCE)
        async def place(request: ReserveRequest, call_id: str) -> Placement:
            return Placement(node=self.NODE, routing={self.NODE: "http://gateway"})

        @activity.defn(name=RELEASE_INSTANCE)
        async def release(request: ReleaseRequest, call_id: str) -> None:
            pass

        @activity.defn(name=ALLOCATE_PORT)
        async def allocate(request: PortRequest) -> int:
            await self._maybe_hold(ALLOCATE_PORT)
            return 30001

        @activity.defn(name=CONFIGURE_ROUTE)
        async def route(request: RouteRequest) -> str:
            await self._maybe_hold(CONFIGURE_ROUTE)
            return f"http://gateway/models/{request.deployment}/v1"

        @activity.defn(name=PREPARE_FILES)
        async def files(request: PrepareFilesInput) -> PreparedModel:
            await self._maybe_hold(PREPARE_FILES)
            choice = EngineChoice(engine="llamacpp", reasons=["stand-in"]) if request.choose_engine else None
            return PreparedModel(path=request.model, format="gguf", choice=choice)

        @activity.defn(name=LAUNCH_ENGINE)
        async def launch(request: LaunchRequest) -> EngineHandle:
            await self._maybe_hold(LAUNCH_ENGINE)
            return EngineHandle(
                instance_id=request.instance_id, deployment=request.deployment, engine=request.engine,
                port=request.port, pid=1, log_path="/dev/null", started_at=0,
            )

        @activity.defn(name=AWAIT_READY)
        async def ready(request: ReadyRequest) -> EngineOutcome:
            if self.held == AWAIT_READY:  # a real await_ready heartbeats: it can be cancelled
                self.entered.set()
                while not self.release.is_set():
                    activity.heartbeat()
                    await asyncio.sleep(0.05)
            return EngineOutcome(ready=True)

        @activity.defn(name=SUPERVISE)
        async def supervise(handle: EngineHandle) -> EngineOutcome:
            while True:  # serves until cancelled
                activity.heartbeat()
                await asyncio.sleep(0.05)

        @activity.defn(name=STOP_ENGINE)
        async def stop_engine(request: StopRequest) -> None:
            self.stopped_engines.append(request.instance_id)

        @activity.defn(name=REMOVE_ROUTE)
        async def remove_route(deployment: str) -> None:
            pass

        @activity.defn(name=RELEASE_PORT)
        async def release_port(request: PortRequest) -> None:
            pass

        return [place, release, allocate, route, files, launch, ready, supervise, stop_engine,
                remove_route, release_port]


@pytest.fixture(scope="module")
async def standin_env():
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
    ) as env:
        yield env


@pytest.mark.parametrize(
    "step", HELD_STEPS
)
async def test_stop_during_each_pipeline_step(standin_env, step):
    client = standin_env.client
    standins = StandIns(held=step)
    name = f"held-{step.replace('_', '-')}"
    control = Worker(
        client, task_queue=CONTROL_TASK_QUEUE, workflows=[DeploymentWorkflow],
        activities=[*standins.activities()[:2], check_spec],  # the real check_spec
    )
    node = Worker(client, task_queue=node_task_queue(StandIns.NODE), activities=standins.activities()[2:])
    async with control, node:
        handle = await client.start_workflow(
            WORKFLOW_TYPE, DeploymentInput(spec=DeploymentSpec(name=name, model="/models/m.gguf")),
            id=workflow_id(name), task_queue=CONTROL_TASK_QUEUE, result_type=DeploymentState,
        )
        try:
            await asyncio.wait_for(standins.entered.wait(), 10)
            await handle.signal(STOP_SIGNAL)
            # answered only once the workflow task that carries the signal has completed
            during = await handle.query(STATE_QUERY, result_type=DeploymentState)
            standins.release.set()
            try:
                final = await asyncio.wait_for(handle.result(), 2)
            except TimeoutError:
                now = await handle.query(STATE_QUERY, result_type=DeploymentState)
                raise AssertionError(
                    f"a stop sent during {step} (status {during.status.value}) was lost: "
                    f"2 s later the deployment is {now.status.value}"
                ) from None
        finally:
            standins.release.set()
            with contextlib.suppress(Exception):
                await handle.terminate("test over")
    assert final.status is S.STOPPED
    assert S.DEPLOYED not in [t.status for t in final.transitions], "it deployed after the stop"
    assert standins.stopped_engines, "teardown did not stop the engine"


async def test_retry_during_a_pipeline_step_is_not_lost(standin_env):
    client = standin_env.client
    standins = StandIns(held=LAUNCH_ENGINE)
    name = "held-retry"
    control = Worker(
        client, task_queue=CONTROL_TASK_QUEUE, workflows=[DeploymentWorkflow],
        activities=[*standins.activities()[:2], check_spec],  # the real check_spec
    )
    node = Worker(client, task_queue=node_task_queue(StandIns.NODE), activities=standins.activities()[2:])
    async with control, node:
        handle = await client.start_workflow(
            WORKFLOW_TYPE, DeploymentInput(spec=DeploymentSpec(name=name, model="/models/m.gguf")),
            id=workflow_id(name), task_queue=CONTROL_TASK_QUEUE, result_type=DeploymentState,
        )
        try:
            await asyncio.wait_for(standins.entered.wait(), 10)
            await handle.signal(RETRY_SIGNAL, {"context_size": 256})
            await handle.query(STATE_QUERY, result_type=DeploymentState)
            standins.release.set()
            deadline = time.monotonic() + 2
            while True:
                state = await handle.query(STATE_QUERY, result_type=DeploymentState)
                if state.status is S.DEPLOYED and state.spec.context_size == 256:
                    break
                assert time.monotonic() < deadline, (
                    f"the retry sent during {LAUNCH_ENGINE} was lost: {state.status.value} with "
                    f"context_size {state.spec.context_size}"
                )
                await asyncio.sleep(0.05)
            assert "retry requested" in [t.detail for t in state.transitions]
        finally:
            standins.release.set()
            with contextlib.suppress(Exception):
                await handle.terminate("test over")
