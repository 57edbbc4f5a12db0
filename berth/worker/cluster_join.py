"""This node in the cluster (docs/cluster.md): its facts, its join at start, and its fencing.

At start the worker makes sure `berth-cluster` runs (the first worker starts it), reads the view,
and joins with this node's facts (a fresh incarnation per start). When its presence is lost (the
presence activity's heartbeat is refused: berth.activities.cluster) it reads the view again: a node
the cluster declared DOWN (or no longer knows) has had its instances replaced elsewhere, so it
fences itself first: the reconcile pass runs at once, before the node joins again, and stops every
engine whose deployment no longer lists it (and once more a moment later, for deployments that
were still replacing theirs). A node the view still holds as itself (the workflow only continued
as new) does nothing.
"""

import asyncio
import logging
import uuid

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from berth.node import presence
from berth.domain.cluster import CLUSTER_WORKFLOW_ID, CLUSTER_WORKFLOW_TYPE, JOIN_UPDATE, NODES_QUERY, ClusterView, NodeStatus, NodeView
from berth.node.cluster_facts import node_facts
from berth.settings import CONTROL_TASK_QUEUE, Settings
from berth.worker.reconcile import Reconciler

log = logging.getLogger(__name__)
# after a fence and a join: one more reconcile pass, for deployments still replacing their instances
SECOND_FENCE_S = 3.0


async def ensure_cluster_workflow(client: Client, grace_s: float) -> WorkflowHandle:
    """Start `berth-cluster` unless it runs (whoever comes first starts it; its grace is theirs)."""
    return await client.start_workflow(
        CLUSTER_WORKFLOW_TYPE,
        {"grace_s": grace_s},  # ClusterInput (berth.workflows.cluster): its first run's input
        id=CLUSTER_WORKFLOW_ID,
        task_queue=CONTROL_TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary="berth's cluster: nodes, presence, reservations",
    )


class Membership:
    def __init__(self, client: Client, settings: Settings, reconciler: Reconciler) -> None:
        self.client = client
        self.settings = settings
        self.reconciler = reconciler
        self.incarnation = uuid.uuid4().hex
        presence.register(self.incarnation, self._on_lost)
        self.joined = asyncio.Event()
        self._lost = asyncio.Event()
        self._second: asyncio.Future | None = None

    async def _on_lost(self, why: str) -> None:
        self._lost.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Join now; then, each time presence is lost, fence if need be and join again."""
        await self._join_until_done(stop, after_loss=False)
        while not stop.is_set():
            lost = asyncio.ensure_future(self._lost.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            stopping.cancel()
            if stop.is_set():
                return
            self._lost.clear()
            await self._join_until_done(stop, after_loss=True)

    async def _join_until_done(self, stop: asyncio.Event, after_loss: bool) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                await self._join(after_loss)
                self.joined.set()
                return
            except Exception as error:  # noqa: BLE001 - Temporal busy or restarting: try again
                log.warning("joining the cluster failed (%s); trying again in %.1f s", error, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(5.0, delay * 2)

    async def _join(self, after_loss: bool) -> None:
        handle = await ensure_cluster_workflow(self.client, self.settings.node_grace_s)
        view = await handle.query(NODES_QUERY, result_type=ClusterView)
        mine = next((node for node in view.nodes if node.facts.node_id == self.settings.node_id), None)
        if after_loss and mine is not None and mine.facts.incarnation == self.incarnation and mine.status in (
            NodeStatus.READY, NodeStatus.DRAINING
        ):
            log.info("presence restarts under a new run of the cluster workflow: node %s stays", self.settings.node_id)
            return
        fence = after_loss or (mine is not None and mine.status is NodeStatus.DOWN)
        if fence:
            log.warning("node %s was %s: stopping the engines its deployments moved away before joining again",
                        self.settings.node_id, mine.status.value if mine else "unknown to the cluster")
            await self.reconciler.run_once(fresh=True)
        facts = await asyncio.to_thread(node_facts, self.settings, self.incarnation)
        joined = await handle.execute_update(JOIN_UPDATE, facts, result_type=NodeView)
        log.info("node %s joined the cluster: %s, capacity %d bytes, engines %s",
                 self.settings.node_id, joined.status.value, facts.capacity_bytes, ", ".join(facts.engines) or "none")
        if fence:
            self._second = asyncio.ensure_future(self._fence_again())

    async def _fence_again(self) -> None:
        await asyncio.sleep(SECOND_FENCE_S)
        try:
            await self.reconciler.run_once(fresh=True)
        except Exception:  # noqa: BLE001 - the periodic pass comes anyway
            log.exception("the second fencing pass failed")
