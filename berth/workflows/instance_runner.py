"""One instance of a deployment, run inside the DeploymentWorkflow as a task of its own: the node
pipeline (files beside the port, launch beside the route, ready, supervise) and the instance's own
restart budget.

    REQUESTED -> placed (a reservation on a node: the cluster's choice) -> COPYING_FILES (the plan's
              bytes confirmed there, or placed again) -> STARTING -> DEPLOYED (supervise)
              -> on failure: classify -> ERROR (restart after a backoff) | FAILED | MUST_REDOWNLOAD
    no node fits -> FAILED (OOM) with every node's reason; no node READY that could -> it waits

What the deployment as a whole then says is the workflow's rule (berth.domain.replicas): each
change of an instance is *reported* to it. Why a task and not a child workflow: docs/replicas.md.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from berth.domain.errors import ErrorCode, Failure
    from berth.domain.pipeline import EngineOutcome, PreparedModel
    from berth.domain.restart_policy import decide
    from berth.domain.spec import DeploymentSpec
    from berth.domain.state import InstanceState
    from berth.domain.status import DeploymentStatus, InstanceStatus

from berth.workflows.node_steps import NodeSteps, check_spec, failure_of, together, unknown_failure

if TYPE_CHECKING:
    from berth.workflows.deployment import DeploymentWorkflow

# how a runner ended: waiting for the user (FAILED, MUST_REDOWNLOAD), or parked so that the
# workflow can continue as new (the engine is stopped; the next run starts it again)
WAITING = "waiting"
ABANDONED = "abandoned"
# placed again this many times in one pass (each node's plan may differ) before giving up
MAX_PLACEMENTS = 8
# a runner that waits for a node asks the cluster again this often, or when the nodes change
WAIT_FOR_NODE = timedelta(seconds=30)
PARKED = "parked"
INTERRUPTED = "interrupted"


class InstanceRunner:
    def __init__(
        self, deployment: DeploymentWorkflow, instance: InstanceState, spec: DeploymentSpec, once: bool = False
    ) -> None:
        self.deployment = deployment
        self.instance = instance
        self.spec = spec  # its own: during a rollout, old and new instances run different specs
        self.once = once  # a rollout's new instance: its first failure ends it (no restart)
        self.context_size: int | None = None
        self.leaving = False  # a scale down, retry or stop takes this instance
        self.abandoned = False  # its node was lost: it ends without a word to that node
        self._deployed_at: float | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> InstanceRunner:
        self.task = asyncio.ensure_future(self.run())
        return self

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def interrupted(self) -> bool:
        return self.leaving or self.abandoned or self.deployment.interrupted

    def abandon(self) -> None:
        """Its node is lost: the task ends at once; its activities there are cancelled and not
        waited for (the node fences itself when it comes back)."""
        self.abandoned = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def stop(self) -> None:
        """End the runner (its engine is stopped by the caller, which knows what else goes)."""
        self.leaving = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, ActivityError):
                pass

    async def run(self) -> str:
        first = True
        while not self.interrupted():
            if not first and self.deployment.may_park():
                return PARKED
            first = False
            outcome = await self._deploy_and_serve()
            if self.abandoned:
                return ABANDONED
            if outcome.node_shutdown:
                self._report(DeploymentStatus.DEPLOYING, "the node restarted: launching again")
                continue
            if not await self._recover_from(outcome.failure or unknown_failure()):
                return WAITING
        return INTERRUPTED

    # ---- one pass of the pipeline -------------------------------------------------------------

    async def _deploy_and_serve(self) -> EngineOutcome:
        """One pass of the pipeline; returns when the engine has failed (or the node went down).
        Independent steps run side by side: each is a round trip through Temporal."""
        deployment, instance = self.deployment, self.instance
        keep, spec = deployment.keep, self.spec
        self._report(DeploymentStatus.DEPLOYING, "selecting an engine")
        try:
            refused = await check_spec(spec)  # the API's rules, for a spec that came straight through Temporal
            if refused:
                return EngineOutcome(failure=refused)
            for _ in range(MAX_PLACEMENTS):
                unplaced = await self._placed()
                if unplaced is not None:
                    return EngineOutcome(failure=unplaced)
                # the files (the engine's choice before them, the memory plan after), beside the port
                node = NodeSteps(instance, self.interrupted)
                keep.set_instance(InstanceStatus.COPYING_FILES, instance)
                instance.port, model = await together(
                    node.allocate_port(), deployment.prepare_files(node, spec, instance)
                )
                if await self._confirmed(model):
                    break
            else:
                return EngineOutcome(failure=Failure(
                    code=ErrorCode.OOM, message=f"placed {MAX_PLACEMENTS} times, refused each time by the node's own plan"
                ))
            choice = model.choice
            keep.record_engine(choice)
            keep.take_files(model)
            self.context_size = model.plan.context_size if model.plan else spec.context_size

            # the launch, beside the route (which holds this instance only when none serves yet)
            keep.set_instance(InstanceStatus.STARTING, instance)
            _, handle = await together(
                deployment.sync_route(),
                node.launch(spec, choice.engine, model.path, self.context_size),
            )
            instance.pid, instance.log_path = handle.pid, handle.log_path

            # INITIALIZING: the engine loads the model
            self._report(DeploymentStatus.INITIALIZING, f"{choice.engine} is loading the model")
            ready = await node.await_ready(handle, spec.startup_timeout_s)
            if not ready.ready:
                return ready

            # DEPLOYED: in the route, served, and watched until it fails
            keep.set_instance(InstanceStatus.DEPLOYED, instance)
            instance.error = None
            self.once = False  # it serves: from now on it restarts like any instance
            self._deployed_at = workflow.time()
            await deployment.sync_route()
            deployment.announce_serving(instance)  # unless the route change did already
            return await node.supervise(handle)
        except ActivityError as error:
            if is_cancelled_exception(error) or self.abandoned:
                raise
            return EngineOutcome(failure=failure_of(error))

    # ---- placement ----------------------------------------------------------------------------

    async def _placed(self) -> Failure | None:
        """A reservation for this instance on a node (None), or why none can hold it (OOM, with
        every node's reason). An instance that ran on a node before (a retry) stays there when it
        still fits; while no node that could hold it is READY (a single node's worker restarting,
        a pinned node DOWN), it waits for one."""
        deployment, instance = self.deployment, self.instance
        if instance.node and instance.reserved_bytes is not None:
            return None
        while True:
            seen = deployment.nodes_seen
            answer = await deployment.reserve(instance, self.spec, node=instance.node or None)
            bytes_asked = deployment.state.memory_per_instance or 0
            if answer.node:
                instance.node, instance.reserved_bytes = answer.node, bytes_asked
                if self.interrupted():
                    raise asyncio.CancelledError()
                return None
            if self.interrupted():
                raise asyncio.CancelledError()
            if instance.node:  # its node cannot hold it any more: anywhere else
                if instance.port:
                    await NodeSteps(instance).release_port()
                    instance.port = None
                instance.node = ""
                continue
            if answer.retry:
                self._report(DeploymentStatus.DEPLOYING, f"waiting for a node: {answer.message}")
                try:
                    await workflow.wait_condition(
                        lambda: self.interrupted() or deployment.nodes_seen != seen, timeout=WAIT_FOR_NODE
                    )
                except asyncio.TimeoutError:
                    pass
                continue
            return Failure(code=ErrorCode.OOM, message=f"no node can hold this instance: {answer.message}")

    async def _confirmed(self, model: PreparedModel) -> bool:
        """The node's plan is known: the reservation takes its bytes (True), or, refused there, the
        reservation and the port go and the instance is placed again with those bytes (False)."""
        deployment, instance = self.deployment, self.instance
        deployment.keep.take_files(model)
        planned = model.plan.estimate_bytes if model.plan else None
        if planned is None or planned == instance.reserved_bytes:
            return True
        answer = await deployment.reserve(instance, self.spec, node=instance.node, bytes=planned)
        if answer.node:
            instance.reserved_bytes = planned
            return True
        await deployment.release(instance)
        await NodeSteps(instance).release_port()
        instance.port, instance.node = None, ""
        return False

    # ---- failures and restarts ----------------------------------------------------------------

    async def _recover_from(self, failure: Failure) -> bool:
        """Record the failure and stop what is left of the engine; then wait for the backoff
        (ERROR: True, a next pass follows) or end for the user (FAILED, MUST_REDOWNLOAD: False)."""
        deployment, instance = self.deployment, self.instance
        keep, spec = deployment.keep, self.spec
        if self._deployed_at is not None and workflow.time() - self._deployed_at >= spec.restart.stable_after_s:
            instance.restarts = 0  # it served long enough: a new crash starts a new count
        self._deployed_at = None
        decision = decide(failure.code, instance.restarts, spec.restart)
        keep.record_error(failure, instance)
        node = NodeSteps(instance)
        if self.once:  # a rollout's new instance: the rollout rolls back (DeploymentWorkflow)
            instance.port = None
            await self._leave_route_quietly()
            await self._stop_for_good(node)
            keep.set_instance(InstanceStatus.FAILED, instance)
            return False
        if decision.status is DeploymentStatus.ERROR:
            # said at once; out of the route if another instance serves; then the engine's remains go
            instance.restarts = decision.attempt
            keep.count_restart(failure)
            instance.next_retry_at = workflow.now() + timedelta(seconds=decision.backoff_s)
            when = f"in {decision.backoff_s:g} s" if decision.backoff_s else "now"
            keep.set_instance(InstanceStatus.ERROR, instance)
            await self._leave_route_quietly()
            self._report(DeploymentStatus.ERROR, f"{failure.code.value}: {decision.reason} {when}")
            if instance.node:
                await node.stop_engine()
            instance.pid = None
            if decision.backoff_s:
                try:
                    await workflow.wait_condition(self.interrupted, timeout=timedelta(seconds=decision.backoff_s))
                except asyncio.TimeoutError:
                    pass
            instance.next_retry_at = None
            return True
        # FAILED / MUST_REDOWNLOAD wait for the user: said only once nothing is left of the engine
        instance.port = None
        await self._leave_route_quietly()
        await self._stop_for_good(node)
        keep.set_instance(InstanceStatus(decision.status.value), instance)
        self._report(decision.status, f"{failure.code.value}: {decision.reason}")
        return False

    async def _stop_for_good(self, node: NodeSteps) -> None:
        """FAILED, MUST_REDOWNLOAD, a rollout's failed instance: its engine stopped, its port and
        its reservation released (a retry places it again: on the same node while it fits)."""
        if self.instance.node:
            await node.stop_engine()
            self.instance.pid = None
            await node.release_port()
            await self.deployment.release(self.instance)
        self.instance.pid = None

    async def _leave_route_quietly(self) -> None:
        try:
            await self.deployment.sync_route()
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            # the next route change writes it again (its servers are then unknown: rewritten)

    def _report(self, status: DeploymentStatus, detail: str) -> None:
        self.deployment.report(self.instance, status, detail)
