"""DeploymentWorkflow: one durable workflow per deployment, from "serve this model" to serving, and
then keeping it serving, with as many instances as asked for, until the user stops it.

    REQUESTED -> one InstanceRunner per instance (berth.workflows.instance_runner): placed by the
              cluster (a reservation on a node), files beside the port, launch beside the route,
              ready, supervise, its own restarts
    the deployment's status: DEPLOYED while one instance serves (degraded when fewer than asked);
              else what its instances report (berth.domain.replicas)
    scale (Update, validated) -> instances added, or drained and stopped (not serving first, newest first)
    stop / Temporal cancel -> teardown (engines, route, ports) -> STOPPED
    retry (optionally with a spec patch) -> the instances start over
    node_lost / node_draining / nodes_changed (from the cluster) -> instances replaced elsewhere /
              moved with a surge / the route sent to every gateway (berth.workflows.node_events)

Read top to bottom: the surface (query, signals, update), the run, what the runners share (the
route, the files, reports), scaling, retries, teardown. The activity calls and their options are in
berth.workflows.node_steps and .activity_options, the state's bookkeeping in .state_keeper. Every
change to what this workflow schedules, or to the order of its commands, follows
docs/workflow-versioning.md.
"""

import asyncio
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from berth.domain.cluster import NODE_DRAINING_SIGNAL, NODE_LOST_SIGNAL, NODES_CHANGED_SIGNAL, NodeEvent, RoutingNodes
    from berth.domain.replicas import cluster_refusal, scale_down_order, scale_refusal, status_after_report
    from berth.domain.spec import DeploymentSpec, SpecPatch, same_instances
    from berth.domain.state import DeploymentState, DownloadProgress, InstanceState
    from berth.domain.status import WAITING_FOR_USER, DeploymentStatus, InstanceStatus
    from berth.domain.temporal_names import (
        DOWNLOAD_PROGRESS_SIGNAL,
        RECONFIGURE_UPDATE,
        RETRY_SIGNAL,
        SCALE_UPDATE,
        STATE_QUERY,
        STOP_SIGNAL,
        WORKFLOW_TYPE,
    )

from berth.workflows import node_events
from berth.workflows.deployment_cluster import ClusterPart
from berth.workflows.instance_runner import InstanceRunner
from berth.workflows.node_steps import NodeSteps, together
from berth.workflows.route_fanout import unpublish
from berth.workflows.rollout import roll
from berth.workflows.state_keeper import BERTH_ENGINE, BERTH_MODEL, BERTH_REPLICAS, BERTH_STATUS, StateKeeper

__all__ = [
    "BERTH_ENGINE", "BERTH_MODEL", "BERTH_REPLICAS", "BERTH_STATUS", "DeploymentInput", "DeploymentWorkflow", "ScaleRequest",
]

_FAILURES = (DeploymentStatus.ERROR, DeploymentStatus.FAILED, DeploymentStatus.MUST_REDOWNLOAD)


class DeploymentInput(BaseModel):
    spec: DeploymentSpec
    carried_state: DeploymentState | None = None  # set by continue-as-new


class ScaleRequest(BaseModel):
    replicas: int


@workflow.defn(name=WORKFLOW_TYPE)
class DeploymentWorkflow(ClusterPart):
    @workflow.init
    def __init__(self, input: DeploymentInput) -> None:
        self.state = input.carried_state or DeploymentState(spec=input.spec)
        self.keep = StateKeeper(self.state)
        self._stop_requested = False
        self._retry_spec: DeploymentSpec | None = None  # set by a valid `retry`
        self.runners: dict[str, InstanceRunner] = {}
        self._leaving: set[str] = set()  # instances being drained: never route servers
        self.surging: set[str] = set()  # instances moving off a draining node: their successor starts
        self._route_lock = asyncio.Lock()
        self._files_locks: dict[str, asyncio.Lock] = {}  # per node
        self._local_ports: dict[str, list[int]] = {}  # each node's own ports in the route, as last sent
        self._announced = {  # serving instances carried over were reported by the run before
            each.instance_id: each.pid for each in self.state.instances
            if each.status is InstanceStatus.DEPLOYED and each.routed
        }
        self._wake = False
        self._rollout_spec: DeploymentSpec | None = None  # set by a valid `reconfigure`
        self.nodes_seen = 0  # node events received: a runner waiting for a node asks again
        # Fetch model files that are gone again? Yes on the first deploy and after a user's retry;
        # an automatic restart stops at MUST_REDOWNLOAD instead.
        self._may_refetch = input.carried_state is None

    # ---- the surface: query, signals, update ---------------------------------------------------

    @workflow.query(name=STATE_QUERY)
    def query_state(self) -> DeploymentState:
        return self.state

    @workflow.signal(name=STOP_SIGNAL)
    def stop(self) -> None:
        self._stop_requested = True

    @workflow.signal(name=RETRY_SIGNAL)
    def retry(self, patch: dict[str, Any] | None = None) -> None:
        """Deploy again now, optionally with some spec fields changed. A bad patch is recorded in
        `rejected_patch` and changes nothing."""
        try:
            spec = self.state.spec.patched(SpecPatch.model_validate(patch or {}))
        except ValidationError as invalid:
            self.keep.reject_patch(invalid)
            return
        self.keep.reject_patch(None)
        self._retry_spec = spec

    @workflow.signal(name=NODE_LOST_SIGNAL)
    async def node_lost(self, event: NodeEvent) -> None:
        """From the cluster: the node is DOWN; its instances are replaced elsewhere."""
        self.nodes_seen += 1
        await node_events.replace_lost(self, event)

    @workflow.signal(name=NODE_DRAINING_SIGNAL)
    async def node_draining(self, event: NodeEvent) -> None:
        """From the cluster: the node drains; its instances move with a surge."""
        self.nodes_seen += 1
        await node_events.drain_node(self, event)

    @workflow.signal(name=NODES_CHANGED_SIGNAL)
    async def nodes_changed(self, nodes: RoutingNodes) -> None:
        """From the cluster: the gateways the route must reach changed."""
        self.nodes_seen += 1
        await node_events.nodes_changed(self, nodes)

    @workflow.signal(name=DOWNLOAD_PROGRESS_SIGNAL)
    def download_progress(self, progress: DownloadProgress) -> None:
        """From prepare_files: how far the download is. Kept only while the files are being fetched."""
        if any(instance.status is InstanceStatus.COPYING_FILES for instance in self.state.instances):
            self.state.download = progress

    @workflow.update(name=SCALE_UPDATE)
    async def scale(self, request: dict[str, Any]) -> DeploymentState:
        """Run this many instances ({"replicas": N}); returns at once (the state says when they serve)."""
        replicas = _scale_request(request).replicas
        self.state.spec = self.state.spec.model_copy(update={"replicas": replicas})
        self.keep.transition(self.state.status, f"scale to {replicas} instance{'s' if replicas != 1 else ''}")
        self._wake = True
        return self.state

    @scale.validator
    def validate_scale(self, request: dict[str, Any]) -> None:
        """Refuses, before anything changes: a bad input, a stopping deployment, a count out of range
        or one the cluster's memory cannot hold (with the per-instance numbers): checked against the
        free memory per node of the cluster's last answer to this deployment (docs/replicas.md)."""
        replicas = _scale_request(request).replicas
        self._refuse_while_busy("INVALID_SCALE")
        state = self.state
        refusal = scale_refusal(replicas, None, None) or cluster_refusal(
            replicas, state.instances, state.memory_per_instance, state.cluster_free
        )
        if not state.cluster_free and not refusal:  # no answer from the cluster yet: the node's plan
            refusal = scale_refusal(replicas, state.memory_per_instance, state.memory_budget)
        if refusal:
            raise ApplicationError(refusal, type="INVALID_SCALE", non_retryable=True)

    @workflow.update(name=RECONFIGURE_UPDATE)
    async def reconfigure(self, patch: dict[str, Any]) -> DeploymentState:
        """Change the spec while serving (a spec patch, as `retry` takes): a DEPLOYED deployment rolls
        one instance at a time (berth.workflows.rollout); one that does not serve starts over with it."""
        self._rollout_spec = _patched(self.state.spec, patch)
        self.state.rollout, self.state.rollout_error = "rolling: about to start", None
        self._wake = True
        return self.state

    @reconfigure.validator
    def validate_reconfigure(self, patch: dict[str, Any]) -> None:
        self._refuse_while_busy("INVALID_RECONFIGURE")
        _patched(self.state.spec, patch)

    def _refuse_while_busy(self, kind: str) -> None:
        if self._stop_requested or self.state.status is DeploymentStatus.STOPPED:
            raise ApplicationError("the deployment is stopping: deploy it again instead", type=kind)
        if self._rollout_spec is not None or (self.state.rollout or "").startswith("rolling"):
            raise ApplicationError("a rollout is in progress: wait until it is done (`rollout` in the state)", type=kind)

    @property
    def interrupted(self) -> bool:
        """A stop or retry came: every runner ends its pass."""
        return self._stop_requested or self._retry_spec is not None

    # ---- the run ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: DeploymentInput) -> DeploymentState:
        try:
            if input.carried_state is None:
                self.keep.transition(DeploymentStatus.REQUESTED, "deployment requested")
            for instance in list(self.state.instances):  # carried over: those not waiting for the user go on
                if instance.status.value not in {status.value for status in WAITING_FOR_USER}:
                    self._start(instance)
            await self._serve_until_stopped()
        except asyncio.CancelledError:
            # A Temporal cancellation (CLI, UI) is a stop: the same teardown, then end as cancelled.
            await self._teardown("cancelled through Temporal")
            raise
        await self._teardown("stopped by the user")
        return self.state

    async def _serve_until_stopped(self) -> None:
        """Keep as many instances as asked for, until the user stops the deployment."""
        while not self._stop_requested:
            if self._retry_spec is not None:
                await self._accept_retry()
                continue
            if self._rollout_spec is not None:
                await self._accept_reconfigure()
                continue
            if self._may_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(DeploymentInput(spec=self.state.spec, carried_state=self.state))
            await self._converge()
            await workflow.wait_condition(
                lambda: self._wake or self.interrupted or self._may_continue_as_new()
            )

    def may_park(self) -> bool:
        """A runner between passes may stop for a continue-as-new: only while none serves."""
        return workflow.info().is_continue_as_new_suggested() and self.state.ready_replicas == 0

    def _may_continue_as_new(self) -> bool:
        return workflow.info().is_continue_as_new_suggested() and not any(
            runner.running for runner in self.runners.values()
        )

    # ---- what the runners share -------------------------------------------------------------

    def report(self, instance: InstanceState, status: DeploymentStatus, detail: str) -> None:
        """An instance changed: what the deployment says then (berth.domain.replicas)."""
        if status is not DeploymentStatus.DEPLOYED:
            self._announced.pop(instance.instance_id, None)  # once it serves again, that is news
        new = status_after_report(status, instance.instance_id, self.state.instances)
        many = self.state.spec.replicas > 1 or len(self.state.instances) > 1
        if new is None:
            if status in _FAILURES and self.state.status is DeploymentStatus.DEPLOYED:
                self.keep.transition(DeploymentStatus.DEPLOYED, f"degraded: {instance.instance_id}: {detail}")
            return
        if new is DeploymentStatus.DEPLOYED:
            self.state.error = None
        elif new in _FAILURES:
            self.state.error = instance.error
        self.state.attempts, self.state.next_retry_at = instance.restarts, instance.next_retry_at
        if many:
            detail = f"{instance.instance_id}: {detail} ({self.state.ready_replicas}/{self.state.spec.replicas} serve)"
        self.keep.transition(new, detail)

    # ---- scaling ----------------------------------------------------------------------------------

    def _start(self, instance: InstanceState, spec: DeploymentSpec | None = None, once: bool = False) -> InstanceRunner:
        runner = InstanceRunner(self, instance, spec or self.state.spec, once).start()
        self.runners[instance.instance_id] = runner
        return runner

    async def _converge(self) -> None:
        """As many instances as asked for: new ones start; extra ones are drained and stopped, those
        that do not serve first, then the newest."""
        self._wake = False
        counted = lambda: len(self.state.instances) - len(self.surging)  # noqa: E731 - a surge's old ones go
        while counted() > self.state.spec.replicas and not self._stop_requested:
            staying = [each for each in self.state.instances if each.instance_id not in self.surging]
            await self._retire(scale_down_order(staying)[0])
        while counted() < self.state.spec.replicas:
            instance = InstanceState(instance_id=f"{self.state.spec.name}-{workflow.uuid4().hex[:8]}")
            self.state.instances.append(instance)
            self._start(instance)
        if not self.state.instances and self.state.status is not DeploymentStatus.DEPLOYED:
            self.keep.transition(DeploymentStatus.DEPLOYED, "scaled to 0: nothing runs")

    def start_instance(self, instance: InstanceState, spec: DeploymentSpec, once: bool) -> InstanceRunner:
        return self._start(instance, spec, once)

    async def retire(self, instance: InstanceState) -> None:
        await self._retire(instance)

    async def _retire(self, instance: InstanceState) -> None:
        """Out of the route, drained, then stopped, its reservation released, and gone from the state."""
        if instance not in self.state.instances:
            return  # gone already (its node was lost)
        self._leaving.add(instance.instance_id)
        if instance.routed:
            await self.sync_route()
            await self._drain(instance)
        await self._stop_instance(instance)
        await self.release(instance)
        if instance in self.state.instances:
            self.state.instances.remove(instance)
        self._leaving.discard(instance.instance_id)
        self.runners.pop(instance.instance_id, None)
        await self.sync_route()
        if self.state.ready_replicas == 0 and self.state.status is DeploymentStatus.DEPLOYED and self.state.instances:
            self.keep.transition(DeploymentStatus.DEPLOYING, "no instance serves after the scale down")
        else:
            self.keep.upsert_search_attributes()  # BerthReplicas

    async def _drain(self, instance: InstanceState) -> None:
        """Out of the route already: its requests in flight finish (berth.node.drain), at most the
        spec's drain_timeout_s; what the drain saw goes into the transitions."""
        if not instance.node or instance.pid is None:
            return
        outcome = await NodeSteps(instance).drain(self.state.spec.drain_timeout_s)
        self.keep.transition(self.state.status, f"{instance.instance_id} drained: {outcome.detail}")

    async def _stop_instance(self, instance: InstanceState, release_port: bool = True) -> None:
        runner = self.runners.get(instance.instance_id)
        if runner is not None:
            await runner.stop()
        if not instance.node:  # never placed: nothing of it on any node
            return
        node = NodeSteps(instance)
        await node.stop_engine()
        instance.pid = None
        if release_port:
            await node.release_port()
            instance.port = None

    # ---- retries ----------------------------------------------------------------------------------

    async def _accept_retry(self) -> None:
        """A `retry` signal: take the (patched) spec, reset the restart counters, start over clean.
        Every instance starts over, except when the spec is the same and some serve: then only
        those that wait for the user (FAILED, MUST_REDOWNLOAD) do."""
        spec, self._retry_spec = self._retry_spec, None
        same = same_instances(spec, self.state.spec) and self.state.ready_replicas > 0
        self.state.spec = spec
        self.state.attempts = 0
        self._may_refetch = True  # the user asked: files that are gone are fetched again
        again = [
            instance for instance in self.state.instances
            if not same or instance.status.value in {status.value for status in WAITING_FOR_USER}
        ]
        await together(*(self._stop_instance(instance, release_port=False) for instance in again))
        for instance in again:
            instance.restarts, instance.error = 0, None
            self.keep.set_instance(InstanceStatus.REQUESTED, instance)
        if not same:
            self.keep.transition(DeploymentStatus.DEPLOYING, "retry requested")
        for instance in again:
            self._start(instance)

    async def _accept_reconfigure(self) -> None:
        spec, self._rollout_spec = self._rollout_spec, None
        if same_instances(spec, self.state.spec):  # nothing the instances run changes: no new ones
            self.state.spec = spec
            self.state.rollout = None
            return
        if self.state.ready_replicas == 0:  # nothing serves: nothing to keep serving, start over with it
            self.state.rollout = None
            self._retry_spec = spec
            return
        await self._converge()  # the desired count first (a scale may be pending)
        await roll(self, spec)

    # ---- teardown -------------------------------------------------------------------------------

    async def _teardown(self, reason: str) -> None:
        for runner in self.runners.values():
            runner.leaving = True
        await together(*(runner.stop() for runner in self.runners.values()))
        placed = [instance for instance in self.state.instances if instance.node]
        await together(*(NodeSteps(instance).stop_engine() for instance in placed))
        for instance in self.state.instances:
            instance.pid = None
        routes = set(self.state.route_nodes) | set(self.state.routing) | {instance.node for instance in placed}
        if routes:
            await unpublish(self.state.spec.name, sorted(routes))
        self.state.route_ports, self.state.route_servers, self.state.endpoint = [], [], None
        await together(*(NodeSteps(instance).release_port() for instance in placed))
        # every reservation, even of an instance whose placement a stop cut short (idempotent)
        await together(*(self.release(instance) for instance in self.state.instances))
        for instance in self.state.instances:
            instance.port, instance.routed = None, False
        self.keep.set_instance(InstanceStatus.STOPPED)
        self.keep.transition(DeploymentStatus.STOPPED, reason)


def _patched(spec: DeploymentSpec, patch: Any) -> DeploymentSpec:
    try:
        return spec.patched(SpecPatch.model_validate(patch or {}))
    except ValidationError as invalid:
        message = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'patch'}: {error['msg']}" for error in invalid.errors()
        )
        raise ApplicationError(f"reconfigure: {message}", type="INVALID_RECONFIGURE", non_retryable=True) from None


def _scale_request(request: Any) -> ScaleRequest:
    try:
        return ScaleRequest.model_validate(request)
    except ValidationError as invalid:
        raise ApplicationError(
            f'scale takes {{"replicas": N}}: {invalid.errors()[0]["msg"]}', type="INVALID_SCALE", non_retryable=True
        ) from None
