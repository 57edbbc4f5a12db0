"""DeploymentWorkflow: one durable workflow per deployment, from "serve this model" to serving, and
then keeping it serving until the user stops it.

    REQUESTED -> DEPLOYING (placement; files with the engine's choice first and the memory plan
                            after, beside the port; launch, beside the route)
              -> INITIALIZING (await ready) -> DEPLOYED (supervise)
              -> on failure: classify -> ERROR (automatic retry after a backoff) | FAILED | MUST_REDOWNLOAD
    stop / Temporal cancel -> teardown (engine, route, port) -> STOPPED
    retry (optionally with a spec patch) -> back to DEPLOYING

Read top to bottom: the surface (query and signals), the run, one pass of the pipeline, failures
and retries, teardown. The activity calls and their options are in berth.workflows.node_steps and
.activity_options, the state's bookkeeping in .state_keeper. Every change to what this workflow
schedules, or to the order of its commands, follows docs/workflow-versioning.md.
"""

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from berth.domain.errors import Failure
    from berth.domain.pipeline import EngineOutcome
    from berth.domain.restart_policy import Decision, decide
    from berth.domain.spec import DeploymentSpec, SpecPatch
    from berth.domain.state import DeploymentState, DownloadProgress, InstanceState
    from berth.domain.status import DeploymentStatus, InstanceStatus
    from berth.domain.temporal_names import (
        DOWNLOAD_PROGRESS_SIGNAL,
        RETRY_SIGNAL,
        STATE_QUERY,
        STOP_SIGNAL,
        WORKFLOW_TYPE,
    )

from berth.workflows.node_steps import NodeSteps, check_spec, failure_of, place, together, unknown_failure
from berth.workflows.state_keeper import BERTH_ENGINE, BERTH_MODEL, BERTH_STATUS, StateKeeper

__all__ = ["BERTH_ENGINE", "BERTH_MODEL", "BERTH_STATUS", "DeploymentInput", "DeploymentWorkflow"]


class DeploymentInput(BaseModel):
    spec: DeploymentSpec
    carried_state: DeploymentState | None = None  # set by continue-as-new


class _Interrupted(Exception):
    """A stop or retry arrived while a step was running."""


@workflow.defn(name=WORKFLOW_TYPE)
class DeploymentWorkflow:
    @workflow.init
    def __init__(self, input: DeploymentInput) -> None:
        self._state = input.carried_state or DeploymentState(spec=input.spec)
        self._keep = StateKeeper(self._state)
        self._stop_requested = False
        self._retry_spec: DeploymentSpec | None = None  # set by a valid `retry`
        self._deployed_at: float | None = None
        self._pass: asyncio.Future | None = None  # the pipeline pass in flight
        # Fetch model files that are gone again? Yes on the first deploy and after a user's retry;
        # an automatic restart stops at MUST_REDOWNLOAD instead.
        self._may_refetch = input.carried_state is None

    # ---- the surface: query and signals ------------------------------------------------------

    @workflow.query(name=STATE_QUERY)
    def state(self) -> DeploymentState:
        return self._state

    @workflow.signal(name=STOP_SIGNAL)
    def stop(self) -> None:
        self._stop_requested = True

    @workflow.signal(name=RETRY_SIGNAL)
    def retry(self, patch: dict[str, Any] | None = None) -> None:
        """Deploy again now, optionally with some spec fields changed. A bad patch is recorded in
        `rejected_patch` and changes nothing."""
        try:
            spec = self._state.spec.patched(SpecPatch.model_validate(patch or {}))
        except ValidationError as invalid:
            self._keep.reject_patch(invalid)
            return
        self._keep.reject_patch(None)
        self._retry_spec = spec

    @workflow.signal(name=DOWNLOAD_PROGRESS_SIGNAL)
    def download_progress(self, progress: DownloadProgress) -> None:
        """From prepare_files: how far the download is. Kept only while the files are being fetched."""
        if self._state.instances and self._state.instances[0].status is InstanceStatus.COPYING_FILES:
            self._state.download = progress

    @property
    def _interrupted(self) -> bool:
        return self._stop_requested or self._retry_spec is not None

    # ---- the run ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: DeploymentInput) -> DeploymentState:
        try:
            if input.carried_state is None:
                self._keep.transition(DeploymentStatus.REQUESTED, "deployment requested")
                node = await place(input.spec.node)
                self._state.instances = [
                    InstanceState(instance_id=f"{input.spec.name}-{workflow.uuid4().hex[:8]}", node=node)
                ]
            await self._serve_until_stopped()
        except asyncio.CancelledError:
            # A Temporal cancellation (CLI, UI) is a stop: the same teardown, then end as cancelled.
            if self._pass is not None and not self._pass.done():
                self._pass.cancel()
            await self._teardown("cancelled through Temporal")
            raise
        await self._teardown("stopped by the user")
        return self._state

    async def _serve_until_stopped(self) -> None:
        """Pass after pass of the pipeline until the user stops it: each pass ends in a failure (then
        recovered from), a node that went down (launched again) or a stop or retry."""
        while not self._stop_requested:
            if self._retry_spec is not None:
                await self._accept_retry()
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(DeploymentInput(spec=self._state.spec, carried_state=self._state))
            try:
                outcome = await self._until_interrupted(self._deploy_and_serve())
            except _Interrupted:
                continue
            if outcome.node_shutdown:
                self._keep.transition(DeploymentStatus.DEPLOYING, "the node restarted: launching again")
                continue
            await self._recover_from(outcome.failure or unknown_failure())

    async def _until_interrupted(self, step) -> EngineOutcome:
        """Run a pass; a stop or retry cancels it and raises _Interrupted."""
        task = self._pass = asyncio.ensure_future(step)
        await workflow.wait_condition(lambda: task.done() or self._interrupted)
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, ActivityError):
            pass
        raise _Interrupted()

    # ---- one pass of the pipeline -------------------------------------------------------------

    async def _deploy_and_serve(self) -> EngineOutcome:
        """One pass of the pipeline; returns when the engine has failed (or the node went down).
        Independent steps run side by side: each is a round trip through Temporal."""
        spec, instance = self._state.spec, self._state.instances[0]
        node = NodeSteps(instance, lambda: self._interrupted)
        self._keep.transition(DeploymentStatus.DEPLOYING, "selecting an engine")
        try:
            refused = await check_spec(spec)  # the API's rules, for a spec that came straight through Temporal
            if refused:
                return EngineOutcome(failure=refused)
            # DEPLOYING: the files (the engine's choice before them, the memory plan after), beside the port
            self._keep.set_instance(InstanceStatus.COPYING_FILES)
            instance.port, model = await together(node.allocate_port(), node.prepare_files(spec, self._may_refetch))
            choice = model.choice
            self._keep.record_engine(choice)
            self._may_refetch = False
            self._keep.take_files(model)

            # the launch, beside the route
            self._keep.set_instance(InstanceStatus.STARTING)
            self._state.endpoint, handle = await together(
                node.configure_route(spec, choice.engine),
                node.launch(spec, choice.engine, model.path, self._state.context_size),
            )
            instance.pid, instance.log_path = handle.pid, handle.log_path

            # INITIALIZING: the engine loads the model
            self._keep.transition(DeploymentStatus.INITIALIZING, f"{choice.engine} is loading the model")
            ready = await node.await_ready(handle, spec.startup_timeout_s)
            if not ready.ready:
                return ready

            # DEPLOYED: served, and watched until it fails
            self._keep.set_instance(InstanceStatus.DEPLOYED)
            self._state.error = None
            self._deployed_at = workflow.time()
            self._keep.transition(DeploymentStatus.DEPLOYED, f"serving at {self._state.endpoint}")
            return await node.supervise(handle)
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            return EngineOutcome(failure=failure_of(error))

    # ---- failures and retries -------------------------------------------------------------------

    async def _recover_from(self, failure: Failure) -> None:
        """Record the failure, stop what is left of the engine, then wait: for the backoff (ERROR),
        or for the user (FAILED, MUST_REDOWNLOAD)."""
        spec = self._state.spec
        if self._deployed_at is not None and workflow.time() - self._deployed_at >= spec.restart.stable_after_s:
            self._state.attempts = 0  # it served long enough: a new crash starts a new count
        self._deployed_at = None
        decision = decide(failure.code, self._state.attempts, spec.restart)
        self._keep.record_error(failure)
        if decision.status is DeploymentStatus.ERROR:
            await self._restart_after_backoff(failure, decision)
            return
        # FAILED / MUST_REDOWNLOAD wait for the user: said only once nothing is left of the engine
        await self._stop_engine()
        await self._release_route_and_port()
        self._keep.transition(decision.status, f"{failure.code.value}: {decision.reason}")
        await workflow.wait_condition(lambda: self._interrupted)

    async def _restart_after_backoff(self, failure: Failure, decision: Decision) -> None:
        """ERROR: said at once (the state stops saying DEPLOYED), then the engine's remains are
        stopped and the backoff waited out (a stop or retry ends it early; the first is none)."""
        self._state.attempts = decision.attempt
        self._state.next_retry_at = workflow.now() + timedelta(seconds=decision.backoff_s)
        when = f"in {decision.backoff_s:g} s" if decision.backoff_s else "now"
        self._keep.transition(DeploymentStatus.ERROR, f"{failure.code.value}: {decision.reason} {when}")
        await self._stop_engine()
        if decision.backoff_s:
            try:
                await workflow.wait_condition(lambda: self._interrupted, timeout=timedelta(seconds=decision.backoff_s))
            except asyncio.TimeoutError:
                pass
        self._state.next_retry_at = None

    async def _accept_retry(self) -> None:
        """A `retry` signal: take the (patched) spec, reset the attempt counter, start over clean."""
        spec, self._retry_spec = self._retry_spec, None
        self._state.spec = spec
        self._state.attempts = 0
        self._may_refetch = True  # the user asked: files that are gone are fetched again
        await self._stop_engine()
        self._keep.transition(DeploymentStatus.DEPLOYING, "retry requested")

    # ---- teardown -------------------------------------------------------------------------------

    async def _teardown(self, reason: str) -> None:
        await self._stop_engine()
        await self._release_route_and_port()
        self._keep.set_instance(InstanceStatus.STOPPED)
        self._keep.transition(DeploymentStatus.STOPPED, reason)

    async def _stop_engine(self) -> None:
        instance = self._state.instances[0] if self._state.instances else None
        if instance is None:
            return
        await NodeSteps(instance).stop_engine()
        instance.pid = None

    async def _release_route_and_port(self) -> None:
        instance = self._state.instances[0] if self._state.instances else None
        if instance is None:
            return
        node = NodeSteps(instance)
        await node.remove_route(self._state.spec.name)
        await node.release_port()
        instance.port = None
        self._state.endpoint = None
