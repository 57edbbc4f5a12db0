"""Shared fixtures: one real berth stack (Temporal, Traefik, worker) for the integration tests."""

import asyncio
import itertools
import re
from pathlib import Path

import pytest

from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODES_QUERY, ClusterView
from berth.domain.temporal_names import STOP_SIGNAL, WORKFLOW_TYPE

from berth.testing.harness import RunningStack
from berth.testing.tiny_gguf import write_garbage_gguf, write_tiny_gguf

_names = itertools.count(1)
_stacks: list = []  # the shared stack, once a test started it
RECONCILE_INTERVAL_S = 2
NODE_MEMORY_LIMIT = "640MiB"


@pytest.fixture(scope="session", autouse=True)
def model_roots(tmp_path_factory):
    """The tests write their models into pytest's temporary folders: the one model root of every
    node they start (berth.settings.MODEL_ROOTS_ENV; $BERTH_HOME/models is always one too). Set in
    this process, so that stacks (berth.testing.harness copies the environment) and activities run
    here see it alike."""
    root = str(tmp_path_factory.getbasetemp().resolve())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BERTH_MODEL_ROOTS", root)
        yield root


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_gguf(models_dir) -> Path:
    return write_tiny_gguf(models_dir / "tiny.gguf")


@pytest.fixture(scope="session")
def garbage_gguf(models_dir) -> Path:
    return write_garbage_gguf(models_dir / "garbage.gguf")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """`berth up` on free ports; at the end it must stop cleanly and leave no process behind."""
    home = tmp_path_factory.mktemp("berth-home")
    running = RunningStack(
        home,
        extra_env={
            "BERTH_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
            "BERTH_FAULT_INJECTION": "1",
            # the worker-crash tests kill the worker on purpose, 8 times in about a minute
            "BERTH_MAX_RESTARTS_PER_MINUTE": "30",
            # a node with little memory, so that a too-big context is refused before launch
            "BERTH_MEMORY_LIMIT": NODE_MEMORY_LIMIT,
        },
    ).start()
    _stacks.append(running)
    yield running
    _stacks.clear()
    code, leftovers = running.stop_and_reap()
    assert code == 0, "berth up did not exit cleanly:\n" + "".join(running.output)
    assert not leftovers, f"processes left behind by the stack: {leftovers}"


@pytest.fixture(scope="module", autouse=True)
async def stop_what_the_module_left_running():
    """After each test module, every deployment still running on the shared stack is stopped and
    awaited: the node's memory is reserved per instance (640 MiB holds two tiny instances), so a
    module that leaves one running would fail the next module's deploys with OOM."""
    yield
    if not _stacks:
        return
    client = await _stacks[0].client()
    query = f'WorkflowType="{WORKFLOW_TYPE}" AND ExecutionStatus="Running"'
    left = [execution.id async for execution in client.list_workflows(query)]

    async def stop(workflow_id: str) -> None:
        handle = client.get_workflow_handle(workflow_id)
        try:
            await handle.signal(STOP_SIGNAL)
            await asyncio.wait_for(handle.result(), 120)
        except Exception:  # noqa: BLE001 - ended meanwhile, or failed: it holds nothing either way
            pass

    await asyncio.gather(*(stop(workflow_id) for workflow_id in left))
    await _no_reservation_left(client, left)


async def _no_reservation_left(client, stopped: list[str]) -> None:
    """Every deployment has ended, so no instance may hold memory on the node any more: a reservation
    left would refuse later deploys with OOM for nothing (a leak in berth, not in the tests)."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        view = await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).query(NODES_QUERY, result_type=ClusterView)
        held = {node.facts.node_id: node.instances for node in view.nodes if node.instances}
        if not held:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"reservations left after every deployment ended (stopped here: {stopped}): {held}")
        await asyncio.sleep(0.5)


@pytest.fixture(scope="session")
async def client(stack):
    return await stack.client()


@pytest.fixture
def name(request) -> str:
    """A fresh deployment name per test (a DNS label)."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40].strip("-")
    return f"{base}-{next(_names)}"


@pytest.fixture(scope="session")
def api(stack):
    """An HTTP client for the stack's REST API, with its bearer token."""
    with stack.api() as http:
        yield http
