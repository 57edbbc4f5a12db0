"""The cluster workflow on a real Temporal dev server, with real workers standing for nodes: join,
reserve (exact, idempotent), release, drain/undrain with validators, presence: a node whose
heartbeats stop is DOWN within the grace (its reservations dropped, `node_lost` sent to its
deployments), a node whose worker stops cleanly and comes back within the grace moves nothing."""

import asyncio
import contextlib
import time
import uuid

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from berth.activities.cluster import release_instance, reserve_instance
from berth.domain.cluster import (
    CLUSTER_WORKFLOW_ID,
    DRAIN_UPDATE,
    JOIN_UPDATE,
    NODE_LOST_SIGNAL,
    NODES_CHANGED_SIGNAL,
    NODE_DRAINING_SIGNAL,
    NODES_QUERY,
    RELEASE_UPDATE,
    RESERVE_UPDATE,
    UNDRAIN_UPDATE,
    ClusterView,
    NodeEvent,
    NodeFacts,
    NodeStatus,
    NodeView,
    Placement,
    ReleaseRequest,
    ReserveRequest,
    RoutingNodes,
    presence_task_queue,
)
from berth.domain.temporal_names import SEARCH_ATTRIBUTES, workflow_id
from berth.settings import CONTROL_TASK_QUEUE
from berth.worker.temporal_server import temporal_binary
from berth.worker.cluster_join import ensure_cluster_workflow
from berth.workflows.cluster import ClusterWorkflow

GRACE_S = 3.0
GIB = 2**30


@workflow.defn(name="ListeningDeployment")
class ListeningDeployment:
    """Stands for a deployment workflow: records the cluster's signals."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name=NODE_LOST_SIGNAL)
    def lost(self, event: NodeEvent) -> None:
        self.heard.append(f"lost:{event.node}")

    @workflow.signal(name=NODE_DRAINING_SIGNAL)
    def draining(self, event: NodeEvent) -> None:
        self.heard.append(f"draining:{event.node}")

    @workflow.signal(name=NODES_CHANGED_SIGNAL)
    def changed(self, nodes: RoutingNodes) -> None:
        self.heard.append("changed:" + ",".join(sorted(nodes.routing)))

    @workflow.query(name="heard")
    def query_heard(self) -> list[str]:
        return self.heard


def facts(node: str, incarnation: str, capacity: int = 4 * GIB, engines=("llamacpp",)) -> NodeFacts:
    return NodeFacts(
        node_id=node, gateway_url=f"http://127.0.0.29:{8000 + len(node)}", incarnation=incarnation, os="Linux",
        arch="x86_64", ram_bytes=capacity, engines=list(engines), capacity_bytes=capacity,
    )


class FakeNode:
    """A node's presence worker; `freeze()` stops its heartbeats as a SIGSTOP would."""

    def __init__(self, client: Client, node: str):
        self.client, self.node, self.incarnation = client, node, uuid.uuid4().hex
        self.lost: list[str] = []
        self.frozen = asyncio.Event()
        self.worker: Worker | None = None

    def activities(self):
        outer = self

        @activity.defn(name="node_presence")
        async def node_presence(node: str, incarnation: str, grace_s: float) -> None:
            try:
                while not outer.frozen.is_set():
                    activity.heartbeat()
                    await asyncio.sleep(grace_s / 4)
                await asyncio.Event().wait()  # frozen: taken, never heartbeats again
            except asyncio.CancelledError:
                details = activity.cancellation_details()
                outer.lost.append("cancel" if details and details.cancel_requested else "lost")
                raise

        return [node_presence]

    async def start(self) -> "FakeNode":
        self.worker = Worker(
            self.client, task_queue=presence_task_queue(self.node), activities=self.activities(),
            max_heartbeat_throttle_interval=__import__("datetime").timedelta(seconds=GRACE_S / 4),
            graceful_shutdown_timeout=__import__("datetime").timedelta(seconds=0.5),
        )
        asyncio.ensure_future(self.worker.run())
        await self.join()
        return self

    async def join(self) -> NodeView:
        handle = self.client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
        return await handle.execute_update(JOIN_UPDATE, facts(self.node, self.incarnation), result_type=NodeView)

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.shutdown()


@pytest.fixture(scope="module")
async def env():
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
    ) as env:
        yield env


@pytest.fixture
async def cluster(env):
    client = env.client
    control = Worker(
        client, task_queue=CONTROL_TASK_QUEUE, workflows=[ClusterWorkflow, ListeningDeployment],
        activities=[reserve_instance, release_instance],
        workflow_runner=UnsandboxedWorkflowRunner(),  # as the worker runs them (berth.worker.main)
    )
    async with control:
        handle = await ensure_cluster_workflow(client, GRACE_S)
        yield client, handle
        with contextlib.suppress(Exception):
            await handle.terminate("test over")


async def view(handle) -> ClusterView:
    return await handle.query(NODES_QUERY, result_type=ClusterView)


async def node_view(handle, node: str) -> NodeView:
    return next(v for v in (await view(handle)).nodes if v.facts.node_id == node)


async def reserve(handle, **fields) -> Placement:
    request = ReserveRequest(**{"deployment": "dep", "model": "/models/m.gguf", **fields})
    return await handle.execute_update(RESERVE_UPDATE, request, result_type=Placement)


async def test_join_reserve_release_drain(cluster):
    client, handle = cluster
    nodes = [await FakeNode(client, name).start() for name in ("n1", "n2", "n3")]
    try:
        placed = [await reserve(handle, instance_id=f"dep-{i}", bytes=GIB) for i in range(3)]
        assert sorted(p.node for p in placed) == ["n1", "n2", "n3"], placed  # spread
        assert set(placed[0].routing) == {"n1", "n2", "n3"}
        again = await reserve(handle, instance_id="dep-0", bytes=GIB)  # idempotent
        assert again.node == placed[0].node
        seen = await view(handle)
        assert sum(v.reserved_bytes for v in seen.nodes) == 3 * GIB
        assert sorted(i for v in seen.nodes for i in v.instances) == ["dep-0", "dep-1", "dep-2"]
        # confirm with planned bytes: fits, or refused with the reason (the old reservation kept)
        bigger = await reserve(handle, instance_id="dep-0", bytes=3 * GIB, node=placed[0].node)
        assert bigger.node == placed[0].node
        refused = await reserve(handle, instance_id="dep-0", bytes=5 * GIB, node=placed[0].node)
        assert refused.node is None and "needs 5.0 GiB" in refused.refusals[placed[0].node], refused
        assert (await node_view(handle, placed[0].node)).reserved_bytes == 3 * GIB
        # nothing fits: every node's reason
        none = await reserve(handle, instance_id="big", bytes=10 * GIB)
        assert none.node is None and set(none.refusals) == {"n1", "n2", "n3"} and not none.retry
        # bad inputs: refused by the validator, nothing recorded
        with pytest.raises(WorkflowUpdateFailedError):
            await reserve(handle, instance_id="x", bytes=-1)
        with pytest.raises(WorkflowUpdateFailedError) as unknown:
            await handle.execute_update(DRAIN_UPDATE, "nope", result_type=NodeView)
        assert "n1, n2, n3" in str(unknown.value.cause)
        # release (idempotent)
        await handle.execute_update(RELEASE_UPDATE, ReleaseRequest(instance_id="dep-0"))
        await handle.execute_update(RELEASE_UPDATE, ReleaseRequest(instance_id="dep-0"))
        assert "dep-0" not in [i for v in (await view(handle)).nodes for i in v.instances]
        # drain: nothing new there, its deployments told; undrain: READY again
        listener = await client.start_workflow(ListeningDeployment.run, id=workflow_id("dep"), task_queue=CONTROL_TASK_QUEUE)
        drained = await handle.execute_update(DRAIN_UPDATE, placed[1].node, result_type=NodeView)
        assert drained.status is NodeStatus.DRAINING
        moved = await reserve(handle, instance_id="dep-9", bytes=GIB, pin=placed[1].node)
        assert moved.node is None and "DRAINING" in moved.refusals[placed[1].node]
        await asyncio.sleep(0.5)
        assert f"draining:{placed[1].node}" in await listener.query("heard", result_type=list[str])
        back = await handle.execute_update(UNDRAIN_UPDATE, placed[1].node, result_type=NodeView)
        assert back.status is NodeStatus.READY
        await listener.terminate()
    finally:
        for node in nodes:
            await node.stop()


async def test_a_frozen_node_is_down_within_the_grace_and_its_deployments_are_told(cluster):
    client, handle = cluster
    listener = await client.start_workflow(ListeningDeployment.run, id=workflow_id("dep"), task_queue=CONTROL_TASK_QUEUE)
    a, b = await FakeNode(client, "fa").start(), await FakeNode(client, "fb").start()
    try:
        on_a = await reserve(handle, instance_id="dep-a", bytes=GIB, pin="fa")
        await reserve(handle, instance_id="dep-b", bytes=GIB, pin="fb")
        assert on_a.node == "fa"
        await asyncio.sleep(GRACE_S)  # several heartbeats: alive
        assert (await node_view(handle, "fa")).status is NodeStatus.READY
        frozen_at = time.monotonic()
        a.frozen.set()
        while (await node_view(handle, "fa")).status is not NodeStatus.DOWN:
            assert time.monotonic() - frozen_at < GRACE_S + 3, "not DOWN within the grace"
            await asyncio.sleep(0.1)
        took = time.monotonic() - frozen_at
        assert took >= GRACE_S - 1, took
        down = await node_view(handle, "fa")
        assert down.instances == [] and down.reserved_bytes == 0
        assert (await node_view(handle, "fb")).instances == ["dep-b"]
        await asyncio.sleep(0.5)
        heard = await listener.query("heard", result_type=list[str])
        assert "lost:fa" in heard, heard
        waiting = await reserve(handle, instance_id="dep-c", bytes=GIB, pin="fa")
        assert waiting.node is None and waiting.retry, waiting  # pinned: waits for its node
        # it comes back and joins again: READY, routes told
        a.frozen.clear()
        rejoined = await a.join()
        assert rejoined.status is NodeStatus.READY and "after DOWN" in (rejoined.reason or "")
        await asyncio.sleep(0.5)
        assert (await listener.query("heard", result_type=list[str]))[-1] == "changed:fa,fb"
    finally:
        await listener.terminate()
        for node in (a, b):
            await node.stop()


async def test_a_worker_restart_within_the_grace_moves_nothing(cluster):
    client, handle = cluster
    node = await FakeNode(client, "fr").start()
    await reserve(handle, instance_id="dep-r", bytes=GIB)
    await node.stop()  # a clean stop: NOT_READY
    await asyncio.sleep(0.5)
    assert (await node_view(handle, "fr")).status is NodeStatus.NOT_READY
    again = await FakeNode(client, "fr").start()  # a new incarnation within the grace
    try:
        await asyncio.sleep(GRACE_S + 2)
        seen = await node_view(handle, "fr")
        assert seen.status is NodeStatus.READY and seen.instances == ["dep-r"], seen
    finally:
        await again.stop()


async def test_a_node_alone_stays_not_ready_past_the_grace_and_goes_down_once_another_is_ready(cluster):
    """Its instances have nowhere to go: DOWN would make them wait for it and then restart every
    engine on it (one machine whose worker was away longer than the grace). NOT_READY instead, its
    reservations kept, nothing told; once another node is READY it is DOWN and its instances move."""
    client, handle = cluster
    listener = await client.start_workflow(ListeningDeployment.run, id=workflow_id("dep"), task_queue=CONTROL_TASK_QUEUE)
    alone = await FakeNode(client, "fs").start()
    other = None
    try:
        await reserve(handle, instance_id="dep-s", bytes=GIB)
        alone.frozen.set()
        await asyncio.sleep(GRACE_S * 2 + 1)
        seen = await node_view(handle, "fs")
        assert seen.status is NodeStatus.NOT_READY and seen.instances == ["dep-s"], seen
        assert "no other node is READY" in (seen.reason or ""), seen.reason
        assert "lost:fs" not in await listener.query("heard", result_type=list[str])
        other = await FakeNode(client, "ft").start()
        deadline = time.monotonic() + 5
        while (seen := await node_view(handle, "fs")).status is not NodeStatus.DOWN:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.1)
        assert seen.instances == []
        await asyncio.sleep(0.5)
        assert "lost:fs" in await listener.query("heard", result_type=list[str])
    finally:
        await listener.terminate()
        for node in (alone, other):
            if node is not None:
                await node.stop()


async def test_a_node_alone_whose_worker_comes_back_late_keeps_its_instances(cluster):
    client, handle = cluster
    alone = await FakeNode(client, "fu").start()
    await reserve(handle, instance_id="dep-u", bytes=GIB)
    alone.frozen.set()
    await asyncio.sleep(GRACE_S * 2 + 1)
    assert (await node_view(handle, "fu")).status is NodeStatus.NOT_READY
    await alone.stop()
    again = await FakeNode(client, "fu").start()  # its worker restarted, long after the grace
    try:
        seen = await node_view(handle, "fu")
        assert seen.status is NodeStatus.READY and seen.instances == ["dep-u"], seen
    finally:
        await again.stop()


async def test_continue_as_new_carries_the_view_and_presence_goes_on():
    """With a short history limit: many reservations make the workflow continue as new; the nodes,
    their status and the reservations carry over, and the new run watches the nodes' presence."""
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"],
    ) as small:
        client = small.client
        control = Worker(
            client, task_queue=CONTROL_TASK_QUEUE, workflows=[ClusterWorkflow],
            activities=[reserve_instance, release_instance], workflow_runner=UnsandboxedWorkflowRunner(),
        )
        async with control:
            handle = await ensure_cluster_workflow(client, GRACE_S)
            first_run = (await handle.describe()).run_id
            nodes = [await FakeNode(client, name).start() for name in ("c1", "c2")]
            try:
                for i in range(30):
                    await reserve(handle, instance_id=f"dep-{i}", bytes=1)
                runs = set()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    runs.add((await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).describe()).run_id)
                    if runs - {first_run}:
                        break
                    await asyncio.sleep(0.2)
                assert runs - {first_run}, "it did not continue as new"
                await asyncio.sleep(GRACE_S + 2)  # the new run's presence activities heartbeat
                seen = await view(client.get_workflow_handle(CLUSTER_WORKFLOW_ID))
                assert [n.status for n in seen.nodes] == [NodeStatus.READY, NodeStatus.READY], seen
                assert sorted(i for n in seen.nodes for i in n.instances) == sorted(f"dep-{i}" for i in range(30))
            finally:
                for node in nodes:
                    await node.stop()
                with contextlib.suppress(Exception):
                    await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).terminate("test over")
