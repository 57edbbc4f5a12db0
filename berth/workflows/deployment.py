"""DeploymentWorkflow: one durable workflow per deployment, from "serve this model" to serving, and
then keeping it serving until the user stops it.

    REQUESTED -> DEPLOYING (placement; files with the engine's choice first and the memory plan
                            after, beside the port; launch, beside the route)
              -> INITIALIZING (await ready) -> DEPLOYED (supervise)
              -> on failure: classify -> ERROR (automatic retry after a backoff) | FAILED | MUST_REDOWNLOAD
    stop / Temporal cancel -> teardown (engine, route, port) -> STOPPED
    retry (optionally with a spec patch) -> back to DEPLOYING
"""

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from berth.domain.errors import ErrorCode, Failure
    from berth.domain.guidance import GuidanceFacts, guidance_for
    from berth.domain.memory import ResourcePlan
    from berth.domain.pipeline import (
        ALLOCATE_PORT,
        AWAIT_READY,
        CONFIGURE_ROUTE,
        LAUNCH_ENGINE,
        PLACE_DEPLOYMENT,
        PLAN_RESOURCES,
        PREPARE_FILES,
        RELEASE_PORT,
        REMOVE_ROUTE,
        SELECT_ENGINE,
        STOP_ENGINE,
        SUPERVISE,
        EngineChoice,
        EngineHandle,
        EngineOutcome,
        LaunchRequest,
        PlanRequest,
        PortRequest,
        PreparedModel,
        PrepareFilesInput,
        ReadyRequest,
        RouteRequest,
        SelectEngineInput,
        StopRequest,
    )
    from berth.domain.restart_policy import Decision, decide
    from berth.domain.spec import DeploymentSpec, SpecPatch
    from berth.domain.state import (
        DeploymentError,
        DeploymentState,
        DownloadProgress,
        InstanceState,
        Transition,
    )
    from berth.domain.status import DeploymentStatus, InstanceStatus
    from berth.domain.temporal_names import (
        DOWNLOAD_PROGRESS_SIGNAL,
        ENGINE_ATTRIBUTE,
        MODEL_ATTRIBUTE,
        RETRY_SIGNAL,
        STATE_QUERY,
        STATUS_ATTRIBUTE,
        STOP_SIGNAL,
        WORKFLOW_TYPE,
    )
    from berth.settings import CONTROL_TASK_QUEUE, node_task_queue

BERTH_STATUS = SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)
BERTH_ENGINE = SearchAttributeKey.for_keyword(ENGINE_ATTRIBUTE)
BERTH_MODEL = SearchAttributeKey.for_keyword(MODEL_ATTRIBUTE)

MAX_TRANSITIONS = 200
# Since this patch, a failure is recorded before the engine is stopped (the state stops saying
# DEPLOYED at once) and the first automatic restart has no backoff. Histories from before replay
# the old order.
FAST_RECOVERY_PATCH = "fast-recovery-v1"
# Since this patch, select_engine runs beside allocate_port, and configure_route beside prepare_files.
CONCURRENT_NODE_STEPS_PATCH = "concurrent-node-steps-v1"
# Since this patch, prepare_files plans the memory too: no plan_resources step, one round trip
# through Temporal fewer before the launch.
PLAN_WITH_FILES_PATCH = "plan-with-files-v1"
# Since this patch, prepare_files chooses the engine first (no select_engine step: one round trip
# fewer before the launch), allocate_port runs beside it, and configure_route beside launch_engine.
SELECT_WITH_FILES_PATCH = "select-with-files-v1"

# Since this patch, placement is a local activity (see _place). The patch is asked before the local
# activity, and when it is set no patch is asked in the workflow task that the local activity's
# result arrives in: every later patch is known set (round 3 saw a patch asked after a local
# activity's result replay differently).
LOCAL_PLACEMENT_PATCH = "local-placement-v1"

# Short node-side steps (milliseconds of work): retried a few times, then the deployment fails
# with their error. The timeout is also how long a worker killed mid-step delays the retry.
QUICK = dict(
    start_to_close_timeout=timedelta(seconds=15),
    retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5),
    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
)
# Placement as a local activity: the same budget, retried by the worker itself.
LOCAL_QUICK = dict(
    start_to_close_timeout=QUICK["start_to_close_timeout"],
    retry_policy=QUICK["retry_policy"],
)
# Teardown must happen even if the node's worker is down for a while: retried until it is back.
TEARDOWN = dict(
    start_to_close_timeout=timedelta(seconds=60),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
    ),
)
# Watching an engine: cancelled with TRY_CANCEL (stop_engine is what really stops the engine),
# heartbeats so that a dead worker is noticed and the watch resumes on the node's next worker.
WATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5)
)
# supervise heartbeats every 0.8 x this (the SDK's throttle), each a write in Temporal: measured at
# 400 supervised deployments, Temporal spent 24% of a core on them at 15 s and 6% at 60 s. A worker
# that dies is not waited out: its restarted successor fails the attempts it held at once
# (berth.worker.takeover); this timeout only bounds a worker that hangs without dying.
SUPERVISE_HEARTBEAT_TIMEOUT = timedelta(seconds=60)


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
        self._stop_requested = False
        self._retry_spec: DeploymentSpec | None = None  # set by a valid `retry`
        self._deployed_at: float | None = None
        self._pass: asyncio.Future | None = None  # the pipeline pass in flight
        # Fetch model files that are gone again? Yes on the first deploy and after a user's retry;
        # an automatic restart stops at MUST_REDOWNLOAD instead.
        self._may_refetch = input.carried_state is None
        self._placed_locally = False  # placed by a local activity: every earlier patch is set

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
            self._state.rejected_patch = _validation_message(invalid)
            return
        self._state.rejected_patch = None
        self._retry_spec = spec

    @workflow.signal(name=DOWNLOAD_PROGRESS_SIGNAL)
    def download_progress(self, progress: DownloadProgress) -> None:
        """From prepare_files: how far the download is. Kept only while the files are being fetched."""
        if self._state.instances and self._state.instances[0].status is InstanceStatus.COPYING_FILES:
            self._state.download = progress

    @property
    def _interrupted(self) -> bool:
        return self._stop_requested or self._retry_spec is not None

    # ---- the pipeline -------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: DeploymentInput) -> DeploymentState:
        try:
            if input.carried_state is None:
                self._transition(DeploymentStatus.REQUESTED, "deployment requested")
                node = await self._place(input.spec.node)
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

    async def _place(self, requested_node: str | None) -> str:
        """Which node runs the deployment: a local activity, run by the worker that runs this
        workflow task, so the pipeline goes on in the same workflow task (one round trip through
        Temporal fewer). Histories from before LOCAL_PLACEMENT_PATCH placed it as an activity."""
        if workflow.patched(LOCAL_PLACEMENT_PATCH):
            self._placed_locally = True
            return await workflow.execute_local_activity(
                PLACE_DEPLOYMENT, requested_node, result_type=str, **LOCAL_QUICK
            )
        return await workflow.execute_activity(
            PLACE_DEPLOYMENT, requested_node, task_queue=CONTROL_TASK_QUEUE, result_type=str, **QUICK
        )

    def _since(self, patch: str) -> bool:
        """Whether this history was made with `patch`. Not asked of Temporal once placement was a
        local activity: that came later than all of them, and no patch may be asked right after it."""
        return self._placed_locally or workflow.patched(patch)

    async def _serve_until_stopped(self) -> None:
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
                self._transition(DeploymentStatus.DEPLOYING, "the node restarted: launching again")
                continue
            await self._recover_from(outcome.failure or _unknown_failure())

    async def _deploy_and_serve(self) -> EngineOutcome:
        """One pass of the pipeline; returns when the engine has failed (or the node went down)."""
        spec, instance = self._state.spec, self._state.instances[0]
        node_queue = node_task_queue(instance.node)
        self._transition(DeploymentStatus.DEPLOYING, "selecting an engine")
        try:
            if self._since(SELECT_WITH_FILES_PATCH):
                # independent steps side by side: each is a round trip through Temporal
                self._set_instance(InstanceStatus.COPYING_FILES)
                instance.port, model = await _together(
                    self._allocate_port(node_queue), self._prepare_files(node_queue, None, plan_memory=True)
                )
                choice = model.choice
                self._record_engine(choice)
                self._take_files(model, model.plan)
                self._set_instance(InstanceStatus.STARTING)
                self._state.endpoint, handle = await _together(
                    self._configure_route(node_queue, choice), self._launch(node_queue, choice, model)
                )
            else:  # histories from before the patch replay the steps of their time
                choice, model = await self._steps_before_select_with_files(node_queue)
                self._set_instance(InstanceStatus.STARTING)
                handle = await self._launch(node_queue, choice, model)
            instance.pid, instance.log_path = handle.pid, handle.log_path

            self._transition(DeploymentStatus.INITIALIZING, f"{choice.engine} is loading the model")
            ready: EngineOutcome = await self._step(
                AWAIT_READY,
                ReadyRequest(handle=handle, startup_timeout_s=spec.startup_timeout_s),
                task_queue=node_queue,
                result_type=EngineOutcome,
                start_to_close_timeout=timedelta(seconds=spec.startup_timeout_s + 120),
                heartbeat_timeout=timedelta(seconds=5),
                retry_policy=WATCH_RETRY,
                cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            )
            if not ready.ready:
                return ready

            self._set_instance(InstanceStatus.DEPLOYED)
            self._state.error = None
            self._deployed_at = workflow.time()
            self._transition(DeploymentStatus.DEPLOYED, f"serving at {self._state.endpoint}")
            return await self._step(
                SUPERVISE,
                handle,
                task_queue=node_queue,
                result_type=EngineOutcome,
                start_to_close_timeout=timedelta(days=3650),
                heartbeat_timeout=SUPERVISE_HEARTBEAT_TIMEOUT,
                retry_policy=WATCH_RETRY,
                cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            return EngineOutcome(failure=_failure_of(error))

    # ---- the node steps before launch --------------------------------------------------------------

    async def _steps_before_select_with_files(self, node_queue: str) -> tuple[EngineChoice, PreparedModel]:
        """The order of histories from before SELECT_WITH_FILES_PATCH: select_engine a step of its
        own, beside allocate_port (one after the other before CONCURRENT_NODE_STEPS_PATCH), then
        the route beside the files (the memory plan a step of its own before PLAN_WITH_FILES_PATCH)."""
        instance = self._state.instances[0]
        plan_with_files = workflow.patched(PLAN_WITH_FILES_PATCH)
        if workflow.patched(CONCURRENT_NODE_STEPS_PATCH):
            self._set_instance(InstanceStatus.REQUESTED)
            choice, instance.port = await _together(self._select_engine(node_queue), self._allocate_port(node_queue))
            self._record_engine(choice)
            self._set_instance(InstanceStatus.COPYING_FILES)
            self._state.endpoint, model = await _together(
                self._configure_route(node_queue, choice),
                self._prepare_files(node_queue, choice, plan_memory=plan_with_files),
            )
        else:
            choice = await self._select_engine(node_queue)
            self._record_engine(choice)
            self._set_instance(InstanceStatus.REQUESTED)
            instance.port = await self._allocate_port(node_queue)
            self._state.endpoint = await self._configure_route(node_queue, choice)
            self._set_instance(InstanceStatus.COPYING_FILES)
            model = await self._prepare_files(node_queue, choice)
        plan = model.plan if plan_with_files else await self._plan_resources(node_queue, choice, model)
        self._take_files(model, plan)
        return choice, model

    def _take_files(self, model: PreparedModel, plan: ResourcePlan | None) -> None:
        self._may_refetch = False
        self._state.model_path, self._state.model_choice = model.path, model.note
        self._state.context_size = plan.context_size if plan else self._state.spec.context_size
        self._state.resource_plan = plan.reasons if plan else []

    async def _select_engine(self, node_queue: str) -> EngineChoice:
        spec = self._state.spec
        return await self._step(
            SELECT_ENGINE, SelectEngineInput(model=spec.model, override=spec.engine),
            task_queue=node_queue, result_type=EngineChoice, **QUICK,
        )

    def _record_engine(self, choice: EngineChoice) -> None:
        self._state.engine, self._state.engine_reasons = choice.engine, choice.reasons
        self._upsert_search_attributes()

    async def _allocate_port(self, node_queue: str) -> int:
        instance = self._state.instances[0]
        return await self._step(
            ALLOCATE_PORT, PortRequest(instance_id=instance.instance_id), task_queue=node_queue,
            result_type=int, **QUICK,
        )

    async def _configure_route(self, node_queue: str, choice: EngineChoice) -> str:
        spec, instance = self._state.spec, self._state.instances[0]
        return await self._step(
            CONFIGURE_ROUTE,
            RouteRequest(deployment=spec.name, port=instance.port, engine=choice.engine, public=spec.public),
            task_queue=node_queue, result_type=str, **QUICK,
        )

    async def _prepare_files(
        self, node_queue: str, choice: EngineChoice | None, plan_memory: bool = False
    ) -> PreparedModel:
        """choice None: prepare_files chooses the engine first (PreparedModel.choice)."""
        spec = self._state.spec
        return await self._step(
            PREPARE_FILES,
            PrepareFilesInput(
                deployment=spec.name, model=spec.model, engine=choice.engine if choice else None,
                choose_engine=choice is None, override=spec.engine, may_refetch=self._may_refetch,
                plan_memory=plan_memory, context_size=spec.context_size,
            ),
            task_queue=node_queue,
            result_type=PreparedModel,
            start_to_close_timeout=timedelta(hours=12),
            # short: a stop reaches a download through its heartbeats (sent at most every 0.8x this);
            # not shorter, or a busy node's event loop would time a healthy download out
            heartbeat_timeout=timedelta(seconds=3),
            retry_policy=QUICK["retry_policy"],
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    async def _launch(self, node_queue: str, choice: EngineChoice, model: PreparedModel) -> EngineHandle:
        spec, instance = self._state.spec, self._state.instances[0]
        return await self._step(
            LAUNCH_ENGINE,
            LaunchRequest(
                instance_id=instance.instance_id,
                deployment=spec.name,
                engine=choice.engine,
                model_path=model.path,
                port=instance.port,
                context_size=self._state.context_size,
                engine_args=spec.engine_args,
                env=spec.env,
            ),
            task_queue=node_queue, result_type=EngineHandle, **QUICK,
        )

    async def _plan_resources(self, node_queue: str, choice: EngineChoice, model: PreparedModel) -> ResourcePlan | None:
        """Histories from before PLAN_WITH_FILES_PATCH: the plan was a step of its own."""
        return await self._step(
            PLAN_RESOURCES,
            PlanRequest(model_path=model.path, engine=choice.engine, context_size=self._state.spec.context_size),
            task_queue=node_queue, result_type=ResourcePlan | None, **QUICK,
        )

    async def _step(self, activity: str, arg: Any, **options: Any) -> Any:
        """One activity of the pipeline. A stop or retry that came while it ran ends the pass here:
        a short activity does not heartbeat, so the cancel never reached it and it completed."""
        result = await workflow.execute_activity(activity, arg, **options)
        if self._interrupted:
            raise asyncio.CancelledError()
        return result

    # ---- failures and retries -------------------------------------------------------------------

    async def _recover_from(self, failure: Failure) -> None:
        """Record the failure, stop what is left of the engine, then wait: for the backoff (ERROR),
        or for the user (FAILED, MUST_REDOWNLOAD)."""
        spec = self._state.spec
        if self._deployed_at is not None and workflow.time() - self._deployed_at >= spec.restart.stable_after_s:
            self._state.attempts = 0  # it served long enough: a new crash starts a new count
        self._deployed_at = None
        fast = self._since(FAST_RECOVERY_PATCH)
        decision = decide(failure.code, self._state.attempts, spec.restart, immediate_first_restart=fast)
        self._state.error = DeploymentError(
            code=failure.code,
            message=failure.message,
            guidance=guidance_for(failure.code, self._guidance_facts(failure)),
            log_lines=failure.log_lines,
            suggested_context_size=failure.suggested_context_size,
            at=workflow.now(),
        )
        if decision.status is DeploymentStatus.ERROR:
            await self._restart_after_backoff(failure, decision, record_first=fast)
            return
        # FAILED / MUST_REDOWNLOAD wait for the user: said only once nothing is left of the engine
        await self._stop_engine()
        await self._release_route_and_port()
        self._transition(decision.status, f"{failure.code.value}: {decision.reason}")
        await workflow.wait_condition(lambda: self._interrupted)

    async def _restart_after_backoff(self, failure: Failure, decision: Decision, record_first: bool) -> None:
        """ERROR: stop the engine's remains and wait out the backoff (a stop or retry ends it early).
        `record_first`: the status says ERROR before the engine is stopped, not after."""
        if not record_first:
            await self._stop_engine()
        self._state.attempts = decision.attempt
        self._state.next_retry_at = workflow.now() + timedelta(seconds=decision.backoff_s)
        when = f"in {decision.backoff_s:g} s" if decision.backoff_s else "now"
        self._transition(DeploymentStatus.ERROR, f"{failure.code.value}: {decision.reason} {when}")
        if record_first:
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
        self._transition(DeploymentStatus.DEPLOYING, "retry requested")

    async def _until_interrupted(self, step) -> EngineOutcome:
        """Run a step; a stop or retry cancels it and raises _Interrupted."""
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

    # ---- teardown -------------------------------------------------------------------------------

    async def _teardown(self, reason: str) -> None:
        await self._stop_engine()
        await self._release_route_and_port()
        self._set_instance(InstanceStatus.STOPPED)
        self._transition(DeploymentStatus.STOPPED, reason)

    async def _stop_engine(self) -> None:
        instance = self._state.instances[0] if self._state.instances else None
        if instance is None:
            return
        await workflow.execute_activity(
            STOP_ENGINE, StopRequest(instance_id=instance.instance_id),
            task_queue=node_task_queue(instance.node), **TEARDOWN,
        )
        instance.pid = None

    async def _release_route_and_port(self) -> None:
        instance = self._state.instances[0] if self._state.instances else None
        if instance is None:
            return
        node_queue = node_task_queue(instance.node)
        await workflow.execute_activity(REMOVE_ROUTE, self._state.spec.name, task_queue=node_queue, **TEARDOWN)
        await workflow.execute_activity(
            RELEASE_PORT, PortRequest(instance_id=instance.instance_id), task_queue=node_queue, **TEARDOWN
        )
        instance.port = None
        self._state.endpoint = None

    # ---- bookkeeping ----------------------------------------------------------------------------

    def _transition(self, status: DeploymentStatus, detail: str) -> None:
        self._state.status = status
        self._state.transitions.append(Transition(at=workflow.now(), status=status, detail=detail))
        del self._state.transitions[:-MAX_TRANSITIONS]
        if status in (DeploymentStatus.ERROR, DeploymentStatus.FAILED, DeploymentStatus.MUST_REDOWNLOAD):
            self._set_instance(InstanceStatus(status.value))
        self._upsert_search_attributes()

    def _set_instance(self, status: InstanceStatus) -> None:
        for instance in self._state.instances:
            instance.status = status
        if status is not InstanceStatus.COPYING_FILES:
            self._state.download = None

    def _upsert_search_attributes(self) -> None:
        updates = [
            BERTH_STATUS.value_set(self._state.status.value),
            BERTH_MODEL.value_set(self._state.spec.model[:2048]),
        ]
        if self._state.engine:
            updates.append(BERTH_ENGINE.value_set(self._state.engine))
        workflow.upsert_search_attributes(updates)

    def _guidance_facts(self, failure: Failure) -> GuidanceFacts:
        spec = self._state.spec
        return GuidanceFacts(
            deployment=spec.name,
            model=spec.model,
            engine=self._state.engine,
            context_size=spec.context_size,
            startup_timeout_s=spec.startup_timeout_s,
            suggested_context_size=failure.suggested_context_size,
            exit_code=failure.exit_code,
            signal=failure.signal,
            missing_files=failure.missing_files,
        )


async def _together(*steps):
    """Run steps side by side; when one fails, the others are cancelled (and awaited) first."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _failure_of(error: ActivityError) -> Failure:
    """The Failure an activity raised, or a TRANSIENT one for a fault with no code of its own."""
    cause = error.cause
    if isinstance(cause, ApplicationError) and cause.type in ErrorCode.__members__:
        if cause.details:
            return Failure.model_validate(cause.details[0])
        return Failure(code=ErrorCode(cause.type), message=cause.message)
    message = str(cause or error)
    return Failure(code=ErrorCode.TRANSIENT, message=f"a step of the pipeline failed: {message}")


def _unknown_failure() -> Failure:
    return Failure(code=ErrorCode.TRANSIENT, message="the engine stopped for no reason berth could see")


def _validation_message(invalid: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'patch'}: {error['msg']}" for error in invalid.errors()
    )
