"""ClusterWorkflow (`berth-cluster`, type BerthCluster): the one entity workflow that knows the nodes
and the memory each instance holds on them (docs/cluster.md).

    join(NodeFacts)         a node's worker, at its start and after its presence was lost: READY;
                            a new incarnation restarts its presence loop (the old one's activity is
                            cancelled with TRY_CANCEL: a dead worker cannot answer)
    presence, per node      node_presence on the node's presence queue, heartbeat timeout = grace,
                            one attempt: a heartbeat timeout (or the activity never taken within the
                            grace) -> DOWN: its reservations dropped, `node_lost` to every deployment
                            that had one; the worker stopped cleanly -> NOT_READY, DOWN if it has not
                            joined again within the grace (a restart moves nothing)
    reserve(ReserveRequest) the choice of a node (berth.domain.placement) and its reservation, or
                            every node's reason; idempotent per instance
    release(ReleaseRequest) the reservation dropped (idempotent)
    drain / undrain         DRAINING (nothing new there; `node_draining` to its deployments) / READY
    query `nodes`           ClusterView

Every update is handled without awaiting anything, so they are applied one at a time: two
instances never take the same bytes. Signals to deployments go out from background tasks. The
workflow continues as new when Temporal suggests it, once every handler and signal is done,
carrying its nodes and reservations; the new run starts a presence loop for every node not DOWN
(the old run's activities end: their heartbeats are refused, and a worker that sees that checks
the view before it does anything: berth.worker.cluster_join).
"""

import asyncio
from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from berth.domain.cluster import (
        CLUSTER_WORKFLOW_TYPE,
        DEFAULT_NODE_GRACE_S,
        DRAIN_UPDATE,
        JOIN_UPDATE,
        NODE_DRAINING_SIGNAL,
        NODE_LOST_SIGNAL,
        NODE_PRESENCE,
        NODES_CHANGED_SIGNAL,
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
        Reservation,
        ReserveRequest,
        RoutingNodes,
        check_node_id,
        presence_task_queue,
    )
    from berth.domain.placement import choose, free_by_node
    from berth.domain.spec import NAME_PATTERN
    from berth.domain.temporal_names import workflow_id

# A presence activity runs as long as its node's worker: no end of its own.
PRESENCE_RUNS_FOR = timedelta(days=3650)
MAX_ID = 200


class ClusterInput(BaseModel):
    grace_s: float = DEFAULT_NODE_GRACE_S
    nodes: list[NodeView] = Field(default_factory=list)  # carried by continue-as-new
    reservations: list[Reservation] = Field(default_factory=list)


def _refuse(message: str) -> None:
    raise ApplicationError(message, type="INVALID_CLUSTER_REQUEST", non_retryable=True)


@workflow.defn(name=CLUSTER_WORKFLOW_TYPE)
class ClusterWorkflow:
    @workflow.init
    def __init__(self, input: ClusterInput) -> None:
        self.grace_s = input.grace_s
        self.nodes: dict[str, NodeView] = {view.facts.node_id: view for view in input.nodes}
        self.reservations: dict[str, Reservation] = {r.instance_id: r for r in input.reservations}
        self._presence: dict[str, asyncio.Task] = {}
        self._joins: dict[str, int] = {}  # node -> joins seen: a stopped worker's grace waits for one
        self._sending: set[asyncio.Task] = set()
        self._waiting: set[str] = set()  # deployments told "retry": told again when a node is READY

    # ---- the run ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: ClusterInput) -> None:
        for node, view in self.nodes.items():
            if view.status is not NodeStatus.DOWN:
                self._watch(node, view.facts.incarnation)
        await workflow.wait_condition(lambda: workflow.info().is_continue_as_new_suggested())
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and not self._sending)
        workflow.continue_as_new(
            ClusterInput(grace_s=self.grace_s, nodes=list(self.nodes.values()), reservations=list(self.reservations.values()))
        )

    # ---- the surface --------------------------------------------------------------------------

    @workflow.query(name=NODES_QUERY)
    def view(self) -> ClusterView:
        views = []
        for node, view in sorted(self.nodes.items()):
            held = [r for r in self.reservations.values() if r.node == node]
            views.append(view.model_copy(update={
                "reserved_bytes": sum(r.bytes for r in held), "instances": sorted(r.instance_id for r in held),
            }))
        return ClusterView(nodes=views, grace_s=self.grace_s)

    @workflow.update(name=JOIN_UPDATE)
    def join(self, facts: NodeFacts) -> NodeView:
        node = facts.node_id
        old = self.nodes.get(node)
        self._joins[node] = self._joins.get(node, 0) + 1
        routing_before = self.routing()
        if old is not None and old.facts.incarnation == facts.incarnation and old.status in (
            NodeStatus.READY, NodeStatus.DRAINING
        ):
            old.facts = facts  # the same worker again (after a continue-as-new): nothing restarts
            return old
        status = NodeStatus.DRAINING if old is not None and old.status is NodeStatus.DRAINING else NodeStatus.READY
        reason = None
        if old is not None and old.status is NodeStatus.DOWN:
            reason = f"joined again after DOWN ({old.reason})"
        elif status is NodeStatus.DRAINING:
            reason = old.reason
        self.nodes[node] = NodeView(facts=facts, status=status, since=workflow.now(), reason=reason)
        self._watch(node, facts.incarnation)
        if self.routing() != routing_before:
            self._tell_all(NODES_CHANGED_SIGNAL, RoutingNodes(routing=self.routing()))
        self._wake_waiting()
        return self.nodes[node]

    @join.validator
    def validate_join(self, facts: NodeFacts) -> None:
        try:
            check_node_id(facts.node_id)
        except ValueError as bad:
            _refuse(str(bad))
        if not facts.gateway_url.startswith(("http://", "https://")) or len(facts.gateway_url) > 500:
            _refuse(f"gateway_url {facts.gateway_url[:80]!r} is not an http(s) URL")
        if not facts.incarnation or len(facts.incarnation) > MAX_ID:
            _refuse("a join names the worker's incarnation (1-200 characters)")
        if facts.capacity_bytes < 0 or facts.ram_bytes < 0:
            _refuse("capacity and RAM are 0 or more bytes")

    @workflow.update(name=RESERVE_UPDATE)
    def reserve(self, request: ReserveRequest) -> Placement:
        held = self.reservations.get(request.instance_id)
        if held is not None and request.node is None:  # asked again (a retried call): the same answer
            return self._placement(request, held.node)
        choice = choose(request, list(self.nodes.values()), list(self.reservations.values()))
        if choice.node is not None:
            self.reservations[request.instance_id] = Reservation(
                instance_id=request.instance_id, deployment=request.deployment, node=choice.node, bytes=request.bytes
            )
            return self._placement(request, choice.node)
        answer = self._placement(request, None)
        answer.refusals, answer.retry = choice.refusals, choice.retry
        if choice.retry:
            self._waiting.add(request.deployment)
        return answer

    @reserve.validator
    def validate_reserve(self, request: ReserveRequest) -> None:
        if not request.instance_id or len(request.instance_id) > MAX_ID:
            _refuse("a reservation names its instance (1-200 characters)")
        if not NAME_PATTERN.match(request.deployment):
            _refuse(f"{request.deployment[:80]!r} is not a deployment name")
        if request.bytes < 0:
            _refuse(f"bytes must be 0 or more (got {request.bytes})")
        for node in [request.pin, request.node, *request.allowed, *request.avoid]:
            if node is not None:
                try:
                    check_node_id(node)
                except ValueError as bad:
                    _refuse(str(bad))

    @workflow.update(name=RELEASE_UPDATE)
    def release(self, request: ReleaseRequest) -> None:
        self.reservations.pop(request.instance_id, None)

    @workflow.update(name=DRAIN_UPDATE)
    def drain(self, node: str) -> NodeView:
        view = self.nodes[node]
        if view.status is NodeStatus.READY or view.status is NodeStatus.NOT_READY:
            view.status, view.since, view.reason = NodeStatus.DRAINING, workflow.now(), "drained"
        if view.status is NodeStatus.DRAINING:
            self._tell_holders(node, NODE_DRAINING_SIGNAL, NodeEvent(node=node, reason="drained", routing=self.routing()))
        return view

    @drain.validator
    def validate_drain(self, node: str) -> None:
        self._known(node)

    @workflow.update(name=UNDRAIN_UPDATE)
    def undrain(self, node: str) -> NodeView:
        view = self.nodes[node]
        if view.status is NodeStatus.DRAINING:
            view.status, view.since, view.reason = NodeStatus.READY, workflow.now(), None
            self._wake_waiting()
        return view

    @undrain.validator
    def validate_undrain(self, node: str) -> None:
        self._known(node)

    def _known(self, node: str) -> None:
        if not isinstance(node, str) or node not in self.nodes:
            known = ", ".join(sorted(self.nodes)) or "none has joined"
            _refuse(f"no node {str(node)[:80]!r} in the cluster (nodes: {known})")

    # ---- answers ------------------------------------------------------------------------------

    def routing(self) -> dict[str, str]:
        """The gateways every route reaches: every node but the DOWN ones."""
        return {
            node: view.facts.gateway_url for node, view in sorted(self.nodes.items()) if view.status is not NodeStatus.DOWN
        }

    def _placement(self, request: ReserveRequest, node: str | None) -> Placement:
        nodes, reservations = list(self.nodes.values()), list(self.reservations.values())
        return Placement(
            node=node,
            gateway_url=self.nodes[node].facts.gateway_url if node else None,
            routing=self.routing(),
            free=free_by_node(request, nodes, reservations),
        )

    # ---- presence -----------------------------------------------------------------------------

    def _watch(self, node: str, incarnation: str) -> None:
        previous = self._presence.pop(node, None)
        if previous is not None and not previous.done():
            previous.cancel()
        self._presence[node] = asyncio.ensure_future(self._presence_loop(node, incarnation))

    async def _presence_loop(self, node: str, incarnation: str) -> None:
        grace = timedelta(seconds=self.grace_s)
        try:
            await workflow.execute_activity(
                NODE_PRESENCE,
                args=[node, incarnation, self.grace_s],
                task_queue=presence_task_queue(node),
                schedule_to_start_timeout=grace,
                heartbeat_timeout=grace,
                start_to_close_timeout=PRESENCE_RUNS_FOR,
                retry_policy=RetryPolicy(maximum_attempts=1),
                cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
                summary=f"presence of node {node}",
            )
            timed_out, reason = False, "its worker stopped"
        except asyncio.CancelledError:
            return  # a join of a new incarnation watches it now
        except ActivityError as error:
            if is_cancelled_exception(error):
                return
            timed_out = isinstance(error.cause, TimeoutError)
            reason = (
                f"no presence heartbeat for {self.grace_s:g} s" if timed_out
                else f"its worker stopped ({error.cause or error})"[:300]
            )
        view = self.nodes.get(node)
        if view is None or view.facts.incarnation != incarnation or view.status is NodeStatus.DOWN:
            return
        if not timed_out:  # a clean stop: NOT_READY; DOWN unless it joins again within the grace
            joins = self._joins.get(node, 0)
            view.status, view.since, view.reason = NodeStatus.NOT_READY, workflow.now(), reason
            try:
                await workflow.wait_condition(lambda: self._joins.get(node, 0) != joins, timeout=grace)
                return
            except asyncio.TimeoutError:
                if self.nodes[node].facts.incarnation != incarnation:
                    return
        if not self._another_ready(node):
            # alone (one machine, or the others are down too): its instances have nowhere to go, and
            # DOWN would only make them wait for this node and then restart every engine on it.
            # NOT_READY keeps its reservations for its worker to re-adopt when it joins again; DOWN
            # the moment another node is READY (then they can move).
            joins = self._joins.get(node, 0)
            view.status, view.since = NodeStatus.NOT_READY, workflow.now()
            view.reason = f"{reason}; no other node is READY to take its instances"
            await workflow.wait_condition(lambda: self._joins.get(node, 0) != joins or self._another_ready(node))
            if self._joins.get(node, 0) != joins or self.nodes[node].facts.incarnation != incarnation:
                return
        self._down(node, reason)

    def _another_ready(self, node: str) -> bool:
        return any(view.status is NodeStatus.READY for other, view in self.nodes.items() if other != node)

    def _down(self, node: str, reason: str) -> None:
        view = self.nodes[node]
        view.status, view.since, view.reason = NodeStatus.DOWN, workflow.now(), reason
        lost = {r.deployment for r in self.reservations.values() if r.node == node}
        for instance in [r.instance_id for r in self.reservations.values() if r.node == node]:
            del self.reservations[instance]
        event = NodeEvent(node=node, reason=reason, routing=self.routing())
        for deployment in sorted(lost):
            self._send(deployment, NODE_LOST_SIGNAL, event)
        others = {r.deployment for r in self.reservations.values()} - lost
        for deployment in sorted(others):
            self._send(deployment, NODES_CHANGED_SIGNAL, RoutingNodes(routing=event.routing))

    # ---- signals to deployments ---------------------------------------------------------------

    def _wake_waiting(self) -> None:
        """A node is READY: the deployments that wait for one ask again."""
        for deployment in sorted(self._waiting):
            self._send(deployment, NODES_CHANGED_SIGNAL, RoutingNodes(routing=self.routing()))
        self._waiting.clear()

    def _tell_all(self, signal: str, payload: BaseModel) -> None:
        for deployment in sorted({r.deployment for r in self.reservations.values()}):
            self._send(deployment, signal, payload)

    def _tell_holders(self, node: str, signal: str, payload: BaseModel) -> None:
        for deployment in sorted({r.deployment for r in self.reservations.values() if r.node == node}):
            self._send(deployment, signal, payload)

    def _send(self, deployment: str, signal: str, payload: BaseModel) -> None:
        async def send() -> None:
            try:
                await workflow.get_external_workflow_handle(workflow_id(deployment)).signal(signal, payload)
            except Exception:  # noqa: BLE001 - the deployment ended: nothing to tell
                workflow.logger.info("cluster: %s not sent to %s (it ended)", signal, deployment)

        task = asyncio.ensure_future(send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
