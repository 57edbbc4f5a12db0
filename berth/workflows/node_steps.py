"""The deployment workflow's calls to its activities, each with its request and its options
(berth.workflows.activity_options), and the helpers of its loop: steps side by side, the Failure an
activity raised.

Every step but placement runs on the instance's node (its task queue); placement (reserve_instance,
release_instance: the cluster workflow's updates, berth.workflows.cluster) and check_spec are local
activities, run by the worker that runs the workflow task, so the pipeline goes on in the same
workflow task (one round trip through Temporal fewer).
"""

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from berth.domain.errors import ErrorCode, Failure
    from berth.domain.pipeline import (
        ALLOCATE_PORT,
        AWAIT_READY,
        CHECK_SPEC,
        DRAIN_ENGINE,
        LAUNCH_ENGINE,
        PREPARE_FILES,
        RELEASE_PORT,
        STOP_ENGINE,
        SUPERVISE,
        DrainOutcome,
        DrainRequest,
        EngineHandle,
        EngineOutcome,
        LaunchRequest,
        PortRequest,
        PreparedModel,
        PrepareFilesInput,
        ReadyRequest,
        SpecCheck,
        StopRequest,
    )
    from berth.domain.cluster import RELEASE_INSTANCE, RESERVE_INSTANCE, Placement, ReleaseRequest, ReserveRequest
    from berth.domain.spec import DeploymentSpec
    from berth.domain.state import InstanceState
    from berth.domain.ui_details import launch_summary, step_summary
    from berth.settings import node_task_queue

from berth.workflows import activity_options as options


async def reserve(request: ReserveRequest) -> Placement:
    """The cluster's choice of a node for the instance, its memory reserved there (or every node's
    reason). Each call has its own update id: a retried attempt of the local activity is the same
    update, and Temporal answers it once."""
    call_id = f"{request.instance_id}-{workflow.uuid4().hex[:8]}"
    return await workflow.execute_local_activity(
        RESERVE_INSTANCE, args=[request, call_id], result_type=Placement, **options.LOCAL_QUICK
    )


async def release(instance_id: str) -> None:
    """The instance's reservation dropped (idempotent: one it never had is no error)."""
    call_id = f"{instance_id}-{workflow.uuid4().hex[:8]}"
    await workflow.execute_local_activity(
        RELEASE_INSTANCE, args=[ReleaseRequest(instance_id=instance_id), call_id], **options.LOCAL_QUICK
    )


async def check_spec(spec: DeploymentSpec) -> Failure | None:
    """Does berth run this spec at all (env policy, engine flag tables)? The same rules as the API,
    here because anyone who can reach Temporal can start or retry a workflow with any spec. A local
    activity (its verdict is recorded: a replay does not judge again) at the start of every pass,
    before anything touches the node: None, or the refusal (ENGINE_UNAVAILABLE: FAILED)."""
    request = SpecCheck(engine=spec.engine, engine_args=spec.engine_args, env_names=list(spec.env))
    return await workflow.execute_local_activity(
        CHECK_SPEC, request, result_type=Failure | None, **options.LOCAL_QUICK
    )


class NodeSteps:
    """The activities of one instance, on its node. `interrupted`: whether a stop or retry came;
    a pipeline step that completes after one ends the pass (raises CancelledError), since a short
    activity does not heartbeat, so the cancel never reached it and it completed. Teardown steps
    always run to their end."""

    def __init__(self, instance: InstanceState, interrupted: Callable[[], bool] = lambda: False) -> None:
        self.instance = instance
        self.queue = node_task_queue(instance.node)
        self._interrupted = interrupted

    # ---- the pipeline ---------------------------------------------------------------------------

    async def allocate_port(self) -> int:
        request = PortRequest(instance_id=self.instance.instance_id)
        return await self._step(ALLOCATE_PORT, request, int, self._on_node("allocate a port"), **options.QUICK)

    async def prepare_files(
        self, spec: DeploymentSpec, may_refetch: bool, instances: int = 1, source_gateway_url: str | None = None
    ) -> PreparedModel:
        """The files in place, the engine chosen before them (PreparedModel.choice) and the memory
        planned after them (PreparedModel.plan), for `instances` instances of it on the node. A
        `NODE:/path` model is copied from that node's gateway (`source_gateway_url`)."""
        extra = {}
        if source_gateway_url and "source_gateway_url" in PrepareFilesInput.model_fields:
            extra["source_gateway_url"] = source_gateway_url
        request = PrepareFilesInput(
            deployment=spec.name, model=spec.model, engine=None, choose_engine=True, override=spec.engine,
            may_refetch=may_refetch, plan_memory=True, context_size=spec.context_size, instances=instances, **extra,
        )
        summary = self._on_node(f"prepare the files of {spec.model[:200]}")
        return await self._step(PREPARE_FILES, request, PreparedModel, summary, **options.PREPARE_FILES)

    async def launch(
        self, spec: DeploymentSpec, engine: str, model_path: str, context_size: int | None
    ) -> EngineHandle:
        request = LaunchRequest(
            instance_id=self.instance.instance_id,
            deployment=spec.name,
            engine=engine,
            model_path=model_path,
            port=self.instance.port,
            context_size=context_size,
            engine_args=spec.engine_args,
            env=spec.env,
        )
        summary = launch_summary(engine, self.instance.node, self.instance.port)
        return await self._step(LAUNCH_ENGINE, request, EngineHandle, summary, **options.QUICK)

    async def await_ready(self, handle: EngineHandle, startup_timeout_s: float) -> EngineOutcome:
        request = ReadyRequest(handle=handle, startup_timeout_s=startup_timeout_s)
        summary = self._on_node(f"wait until {handle.engine} serves", handle.port)
        return await self._step(AWAIT_READY, request, EngineOutcome, summary, **options.await_ready(startup_timeout_s))

    async def supervise(self, handle: EngineHandle) -> EngineOutcome:
        summary = self._on_node(f"supervise {handle.engine}", handle.port)
        return await self._step(SUPERVISE, handle, EngineOutcome, summary, **options.SUPERVISE)

    def _on_node(self, what: str, port: int | None = None) -> str:
        """The activity's summary in the Temporal UI (berth.domain.ui_details)."""
        return step_summary(what, self.instance.node, port)

    async def _step(self, activity: str, arg: Any, result_type: type, summary: str, **activity_options: Any) -> Any:
        result = await workflow.execute_activity(
            activity, arg, task_queue=self.queue, result_type=result_type, summary=summary, **activity_options
        )
        if self._interrupted():
            raise asyncio.CancelledError()
        return result

    # ---- teardown -------------------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> DrainOutcome:
        """Once the instance left the route: until its engine has no request in flight, at most
        `timeout_s`. Raises only a cancellation: a drain that failed or was not taken is a drain
        that ended."""
        request = DrainRequest(instance_id=self.instance.instance_id, timeout_s=timeout_s)
        summary = self._on_node(f"drain: wait for requests in flight (at most {timeout_s:g} s)", self.instance.port)
        try:
            return await workflow.execute_activity(
                DRAIN_ENGINE, request, task_queue=self.queue, result_type=DrainOutcome, summary=summary,
                **options.drain(timeout_s),
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            detail = f"drain not done: {error.cause or error}"
            return DrainOutcome(idle=False, waited_s=0.0, detail=detail[:500])

    async def stop_engine(self) -> None:
        request = StopRequest(instance_id=self.instance.instance_id)
        await workflow.execute_activity(
            STOP_ENGINE, request, task_queue=self.queue, summary=self._on_node("stop the engine"), **options.TEARDOWN
        )

    async def release_port(self) -> None:
        request = PortRequest(instance_id=self.instance.instance_id)
        await workflow.execute_activity(
            RELEASE_PORT, request, task_queue=self.queue, summary=self._on_node("release the port"), **options.TEARDOWN
        )


async def together(*steps):
    """Run steps side by side; when one fails, the others are cancelled (and awaited) first."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def failure_of(error: ActivityError) -> Failure:
    """The Failure an activity raised, or a TRANSIENT one for a fault with no code of its own."""
    cause = error.cause
    if isinstance(cause, ApplicationError) and cause.type in ErrorCode.__members__:
        if cause.details:
            return Failure.model_validate(cause.details[0])
        return Failure(code=ErrorCode(cause.type), message=cause.message)
    message = str(cause or error)
    return Failure(code=ErrorCode.TRANSIENT, message=f"a step of the pipeline failed: {message}")


def unknown_failure() -> Failure:
    return Failure(code=ErrorCode.TRANSIENT, message="the engine stopped for no reason berth could see")
