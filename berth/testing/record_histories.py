"""Record one Temporal history of each kind of deployment, for the replay test (tests/test_replay.py).

    python -m berth.testing.record_histories tests/fixtures/histories/gen1

Starts a private `berth up` (temporary $BERTH_HOME, free ports, the tiny GGUF), runs each kind of
deployment to its end, and writes each workflow's history as JSON to OUT_DIR/<kind>.json:

    success     deployed, then stopped
    failure     a garbage GGUF: FAILED, then stopped
    retry       engine killed (ERROR -> DEPLOYED), then `retry` with a context_size patch
                (DEPLOYED again), then stopped
    cancel      deployed, then `temporal workflow cancel`
    stop-early  stopped right after it was started
    refused     started (as from the Temporal CLI, no API) with env LD_PRELOAD: the workflow's
                check_spec refuses it, FAILED with nothing run on the node, then stopped

One folder per live generation of DeploymentWorkflow (gen1 today), each listed in
tests/test_replay.py's GENERATIONS. When and how to record a new one: docs/workflow-versioning.md.
"""

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODES_QUERY, ClusterView, NodeStatus
from berth.domain.spec import DeploymentSpec, RestartPolicy
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import RECONFIGURE_UPDATE, RETRY_SIGNAL, SCALE_UPDATE, STOP_SIGNAL, workflow_id
from berth.testing.harness import RunningStack, start_deployment, wait_for_status
from berth.testing.tiny_gguf import write_garbage_gguf, write_tiny_gguf
from berth.worker.temporal_server import temporal_binary

KINDS = ("success", "failure", "retry", "cancel", "stop-early", "refused", "scale", "reconfigure")
QUICK_RESTARTS = RestartPolicy(max_attempts=3, backoff_initial_s=0.2, backoff_max_s=0.5)
RETRY_PATCH = {"context_size": 256}


def deployment_name(kind: str) -> str:
    return f"history-{kind}"


def history_workflow_id(kind: str) -> str:
    """The workflow id the history of `kind` was recorded under (WorkflowHistory wants it)."""
    return workflow_id(deployment_name(kind))


async def _closed(handle: WorkflowHandle, timeout_s: float = 60) -> WorkflowExecutionStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = (await handle.describe()).status
        if status is not WorkflowExecutionStatus.RUNNING:
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"{handle.id} did not close within {timeout_s} s")
        await asyncio.sleep(0.05)


async def _stop(client: Client, name: str) -> WorkflowHandle:
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal(STOP_SIGNAL)
    return handle


async def _until(client: Client, name: str, predicate, timeout_s: float = 60) -> DeploymentState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await wait_for_status(client, name, set(S), timeout_s=timeout_s)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: condition not met; last state {state.model_dump_json(indent=1)}")
        await asyncio.sleep(0.05)


async def _node_joined(client: Client, timeout_s: float = 60) -> None:
    """Until the stack's node is READY in the cluster: a deployment started before waits for it, and
    the `nodes_changed` that ends the wait would add route steps that a recording should not depend on."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            view = await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).query(NODES_QUERY, result_type=ClusterView)
            if any(node.status is NodeStatus.READY for node in view.nodes):
                return
        except Exception:  # noqa: BLE001 - not started yet, or busy: ask again until the deadline
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no node joined the cluster within {timeout_s:g} s")
        await asyncio.sleep(0.1)


async def run_success(stack: RunningStack, client: Client, tiny: Path) -> WorkflowHandle:
    name = deployment_name("success")
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny)))
    await _expect(client, name, S.DEPLOYED)
    return await _stop(client, name)


async def run_failure(stack: RunningStack, client: Client, garbage: Path) -> WorkflowHandle:
    name = deployment_name("failure")
    await start_deployment(client, DeploymentSpec(name=name, model=str(garbage)))
    await _expect(client, name, S.FAILED)
    return await _stop(client, name)


async def run_retry(stack: RunningStack, client: Client, tiny: Path) -> WorkflowHandle:
    name = deployment_name("retry")
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny), restart=QUICK_RESTARTS))
    first = await _expect(client, name, S.DEPLOYED)
    os.kill(first.pid, signal.SIGKILL)
    # ERROR lasts one stop_engine (the first automatic restart has no backoff): a poll of the status
    # can miss it, the transitions keep it
    await _until(client, name, lambda s: any(t.status is S.ERROR for t in s.transitions))
    second = await _until(client, name, lambda s: s.status is S.DEPLOYED and s.pid != first.pid)
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal(RETRY_SIGNAL, RETRY_PATCH)
    await _until(
        client, name,
        lambda s: s.status is S.DEPLOYED and s.pid != second.pid and s.spec.context_size == 256,
    )
    return await _stop(client, name)


async def run_cancel(stack: RunningStack, client: Client, tiny: Path) -> WorkflowHandle:
    name = deployment_name("cancel")
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny)))
    await _expect(client, name, S.DEPLOYED)
    cancel = await asyncio.create_subprocess_exec(
        temporal_binary(), "workflow", "cancel", "--address", stack.settings.temporal_address,
        "--workflow-id", workflow_id(name),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await cancel.communicate()
    if cancel.returncode != 0:
        raise RuntimeError(f"temporal workflow cancel failed: {output.decode(errors='replace')}")
    return client.get_workflow_handle(workflow_id(name))


async def run_stop_early(stack: RunningStack, client: Client, tiny: Path) -> WorkflowHandle:
    name = deployment_name("stop-early")
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny)))
    return await _stop(client, name)


async def run_refused(stack: RunningStack, client: Client, tiny: Path) -> WorkflowHandle:
    name = deployment_name("refused")
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny), env={"LD_PRELOAD": "/tmp/x.so"}))
    await _expect(client, name, S.FAILED)
    return await _stop(client, name)


async def run_scale(stack: RunningStack, client: Client, tiny: Path) -> WorkflowHandle:
    """Two instances, scaled to three, then down to one (drained), then stopped."""
    name = deployment_name("scale")
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny), replicas=2))
    await _until(client, name, lambda s: s.ready_replicas == 2)
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.execute_update(SCALE_UPDATE, {"replicas": 3})
    await _until(client, name, lambda s: s.ready_replicas == 3)
    await handle.execute_update(SCALE_UPDATE, {"replicas": 1})
    await _until(client, name, lambda s: len(s.instances) == 1 and s.ready_replicas == 1)
    return await _stop(client, name)


async def run_reconfigure(stack: RunningStack, client: Client, tiny: Path) -> WorkflowHandle:
    """Two instances rolled to a new context, one at a time, then stopped."""
    name = deployment_name("reconfigure")
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny), replicas=2, context_size=512))
    await _until(client, name, lambda s: s.ready_replicas == 2)
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.execute_update(RECONFIGURE_UPDATE, {"context_size": 1024})
    await _until(client, name, lambda s: s.spec.context_size == 1024 and s.rollout is None and len(s.instances) == 2)
    return await _stop(client, name)


async def _expect(client: Client, name: str, status: S) -> DeploymentState:
    state = await wait_for_status(client, name, {status, S.FAILED, S.DEPLOYED}, timeout_s=60)
    if state.status is not status:
        raise RuntimeError(f"{name}: expected {status.value}, got {state.model_dump_json(indent=1)}")
    return state


EXPECTED_END = {
    "success": WorkflowExecutionStatus.COMPLETED,
    "failure": WorkflowExecutionStatus.COMPLETED,
    "retry": WorkflowExecutionStatus.COMPLETED,
    "cancel": WorkflowExecutionStatus.CANCELED,
    "stop-early": WorkflowExecutionStatus.COMPLETED,
    "scale": WorkflowExecutionStatus.COMPLETED,
    "reconfigure": WorkflowExecutionStatus.COMPLETED,
    "refused": WorkflowExecutionStatus.COMPLETED,
}


async def record(out_dir: Path, kinds: tuple[str, ...] = KINDS) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="berth-histories-") as tmp:
        tmp_path = Path(tmp)
        tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
        garbage = write_garbage_gguf(tmp_path / "garbage.gguf")
        stack = RunningStack(tmp_path / "home").start()
        try:
            client = await stack.client()
            await _node_joined(client)
            runs = {
                "success": lambda: run_success(stack, client, tiny),
                "failure": lambda: run_failure(stack, client, garbage),
                "retry": lambda: run_retry(stack, client, tiny),
                "cancel": lambda: run_cancel(stack, client, tiny),
                "stop-early": lambda: run_stop_early(stack, client, tiny),
                "scale": lambda: run_scale(stack, client, tiny),
                "reconfigure": lambda: run_reconfigure(stack, client, tiny),
                "refused": lambda: run_refused(stack, client, tiny),
            }
            for kind in kinds:
                handle = await runs[kind]()
                status = await _closed(handle)
                if status is not EXPECTED_END[kind]:
                    raise RuntimeError(f"{kind}: the workflow ended {status.name}, not {EXPECTED_END[kind].name}")
                history = await handle.fetch_history()
                path = out_dir / f"{kind}.json"
                path.write_text(history.to_json() + "\n")
                written[kind] = path
                print(f"{kind}: {len(history.events)} events, {path.stat().st_size} bytes -> {path}", flush=True)
        finally:
            _, leftovers = stack.stop_and_reap()
            if leftovers:
                print(f"warning: killed processes the stack left behind: {leftovers}", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    kinds = tuple(args[1:]) or KINDS
    unknown = set(kinds) - set(KINDS)
    if unknown:
        print(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    asyncio.run(record(Path(args[0]), kinds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
