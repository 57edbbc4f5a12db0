"""Deployments as Temporal sees them: the one client facade that the REST API (and tests) use.

Every operation is a Temporal call on the workflow `deployment-<name>`: start it, list it from
visibility (search attributes; listing.py), query its `state`, signal `stop` or `retry`. Input is
checked here before anything reaches Temporal; what goes wrong is one of the typed errors of
errors.py, which the API turns into status codes.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from berth.api.facade.counts import Counted, DeploymentCounts
from berth.api.facade.env_secrets import Sealer, masked
from berth.api.facade.errors import BadRequest, Conflict, NotFound, Unavailable, rpc_error, validation_message
from berth.api.facade.listing import DEFAULT_PAGE_SIZE, DeploymentListing, DeploymentPage, deployment_name
from berth.api.facade.logs import MAX_TAIL, DeploymentLogs, marked_logs, read_log
from berth.api.facade.model_paths import qualify_model, refuse_outside_roots
from berth.domain.spec import NAME_PATTERN, DeploymentSpec, SpecPatch
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus
from berth.domain.temporal_names import (
    RECONFIGURE_UPDATE,
    RETRY_SIGNAL,
    SCALE_UPDATE,
    STATE_QUERY,
    STOP_SIGNAL,
    WORKFLOW_TYPE,
    keyword_value,
    workflow_id,
)
from berth.domain.ui_details import static_details, static_summary
from berth.engines.engine_args import spec_refusal
from berth.settings import CONTROL_TASK_QUEUE, Settings
from berth.common.temporal_connection import connect
from berth.workflows.deployment import BERTH_MODEL, BERTH_STATUS, DeploymentInput

QUERY_TIMEOUT = timedelta(seconds=10)
UPDATE_TIMEOUT = timedelta(seconds=10)  # an update needs a worker: without one, this long
# A workflow that has torn down (STOPPED) but not yet returned is done within moments.
CLOSING_WAIT_S = 10.0


def refuse_unsafe(spec: DeploymentSpec) -> None:
    """BadRequest naming each env variable and engine flag that the node would refuse to run, under
    this API's BERTH_ALLOW_UNSAFE_ENV / BERTH_ALLOW_UNSAFE_ENGINE_ARGS (the node checks again)."""
    refusal = spec_refusal(spec.engine, spec.engine_args, spec.env, os.environ)
    if refusal:
        raise BadRequest(refusal)


class Deployments:
    """Deploy, list, inspect, stop and retry deployments; read their logs."""

    def __init__(self, settings: Settings, client: Client | None = None):
        self.settings = settings
        self._client = client
        self._connecting = asyncio.Lock()
        self._listing = DeploymentListing()
        self._counts = DeploymentCounts()
        self._sealer = Sealer(settings)

    async def client(self) -> Client:
        """The Temporal client, connected on first use (the API may start before Temporal)."""
        if self._client is None:
            async with self._connecting:
                if self._client is None:
                    try:
                        self._client = await connect(self.settings)
                    except RuntimeError as error:
                        raise Unavailable(
                            f"Temporal at {self.settings.temporal_address} does not answer ({error}): "
                            "is `berth up` running?"
                        ) from None
        return self._client

    # ---- deploy ------------------------------------------------------------------------------------

    async def deploy(self, spec: DeploymentSpec) -> DeploymentState:
        """Start `deployment-<name>`. Conflict while a deployment of that name runs and is not
        STOPPED; a STOPPED (closed) one is replaced by a new run. The env values go to Temporal
        sealed (berth.api.facade.env_secrets); the answer shows their names only."""
        refuse_unsafe(spec)
        if spec.replicas == 0:
            raise BadRequest(
                "replicas: deploy at least 1 instance (0, keeping the deployment with nothing running, "
                f"is for scale: POST /v1/deployments/{spec.name}/scale)"
            )
        refuse_outside_roots(spec, self.settings)
        client = await self.client()
        qualified = await qualify_model(spec.model, spec.node, client)  # a plain path, in a cluster: NODE:/path
        if qualified != spec.model:
            spec = spec.model_copy(update={"model": qualified})
        sealed = self._sealer.spec(spec)
        for _ in range(2):
            try:
                handle = await client.start_workflow(
                    WORKFLOW_TYPE,
                    DeploymentInput(spec=sealed),
                    id=workflow_id(spec.name),
                    task_queue=CONTROL_TASK_QUEUE,
                    # a closed run (stopped) may be followed by a new one; a running one may not
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    # what the Temporal UI shows without a query (the workflow keeps the details current)
                    static_summary=static_summary(spec),
                    static_details=static_details(spec),
                    # listed at once, before the workflow's first step upserts the same
                    search_attributes=TypedSearchAttributes(
                        [
                            SearchAttributePair(BERTH_STATUS, DeploymentStatus.REQUESTED.value),
                            SearchAttributePair(BERTH_MODEL, keyword_value(spec.model)),
                        ]
                    ),
                )
            except WorkflowAlreadyStartedError:
                existing = await self.get(spec.name)
                if existing.status is not DeploymentStatus.STOPPED:
                    raise Conflict(
                        f"a deployment named {spec.name!r} already exists (status {existing.status.value}): "
                        f"stop it first, retry it (POST /v1/deployments/{spec.name}/retry), "
                        "or choose another name"
                    ) from None
                await self._wait_closed(await self._handle(spec.name))
                continue
            except RPCError as error:
                raise rpc_error(error, spec.name) from None
            return masked(await self._state_after_start(handle, sealed))
        raise Conflict(f"the deployment {spec.name!r} is still stopping; try again in a moment")

    async def _state_after_start(self, handle: WorkflowHandle, spec: DeploymentSpec) -> DeploymentState:
        try:
            return await handle.query(
                STATE_QUERY, result_type=DeploymentState, rpc_timeout=timedelta(seconds=2)
            )
        except Exception:  # noqa: BLE001 - no worker has taken it yet: it is what was asked, REQUESTED
            return DeploymentState(spec=spec)

    async def _wait_closed(self, handle: WorkflowHandle) -> None:
        deadline = asyncio.get_running_loop().time() + CLOSING_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            if (await self._describe(handle)).status is not WorkflowExecutionStatus.RUNNING:
                return
            await asyncio.sleep(0.05)

    # ---- read ---------------------------------------------------------------------------------------

    async def list(
        self,
        status: DeploymentStatus | str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> DeploymentPage:
        """One page of the deployments (berth.api.facade.listing)."""
        return await self._listing.page(await self.client(), status, page_size, page_token)

    async def counts(self) -> Counted:
        """Running deployments per (status, engine), from visibility counts (berth.api.facade.counts)."""
        return await self._counts.counts(await self.client())

    async def get(self, name: str) -> DeploymentState:
        """The deployment's whole state (the workflow's `state` query), env values masked."""
        return masked(await self._state(name))

    async def _state(self, name: str) -> DeploymentState:
        handle = await self._handle(name)
        try:
            return await handle.query(STATE_QUERY, result_type=DeploymentState, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as error:
            raise rpc_error(error, name) from None

    async def logs(
        self, name: str, tail: int = 100, offset: int | None = None, instance: str | None = None
    ) -> DeploymentLogs:
        """The last `tail` lines of the deployment's engine log (those written at or after byte
        `offset`, when given) and the failure patterns found in them. Each instance has its own
        log: `instance` names one; without it, a deployment of one instance answers with its log,
        one of several with the last `tail` lines of each, every line tagged `[<instance id>] `
        (to follow with `offset`, name the instance).

        Single-node for now: the file named in the state (`instances[0].log_path`) is read from
        this machine's disk, which is where `berth up` runs the engines. A multi-node berth will
        read it through an activity on the instance's node queue instead.
        """
        if not 1 <= tail <= MAX_TAIL:
            raise BadRequest(f"tail: ask for 1 to {MAX_TAIL} lines (got {tail})")
        if offset is not None and offset < 0:
            raise BadRequest(f"offset: must be 0 or more (got {offset})")
        state = await self.get(name)
        ids = [each.instance_id for each in state.instances]
        if instance is not None:
            chosen = [each for each in state.instances if each.instance_id == instance]
            if not chosen:
                raise NotFound(f"{name} has no instance {instance!r}; its instances: {', '.join(ids) or 'none'}")
        elif len(state.instances) > 1:
            if offset is not None:
                raise BadRequest(f"offset: name the instance whose log to follow (instance=...): one of {', '.join(ids)}")
            lines = []
            for each in state.instances:
                own, _ = await asyncio.to_thread(read_log, each.log_path, tail, 0)
                lines += [f"[{each.instance_id}] {line}" for line in own]
            return marked_logs(name, None, state.engine, lines, 0, instances=ids)
        else:
            chosen = state.instances
        path = chosen[0].log_path if chosen else None
        lines, next_offset = await asyncio.to_thread(read_log, path, tail, offset or 0)
        owner = chosen[0].instance_id if chosen else None
        return marked_logs(name, path, state.engine, lines, next_offset, instance=owner, instances=ids)

    # ---- change ------------------------------------------------------------------------------------

    async def stop(self, name: str) -> DeploymentState:
        """Ask the deployment to stop (engine, route and port are released); already stopped is fine."""
        handle = await self._handle(name)
        if (await self._describe(handle)).status is WorkflowExecutionStatus.RUNNING:
            try:
                await handle.signal(STOP_SIGNAL)
            except RPCError as error:
                if error.status is not RPCStatusCode.NOT_FOUND:  # it finished meanwhile: stopped
                    raise rpc_error(error, name) from None
        return await self.get(name)

    async def retry(self, name: str, patch: SpecPatch | dict[str, Any] | None = None) -> DeploymentState:
        """Deploy again now, optionally with some spec fields changed. The patch is validated here,
        on its own and applied to the current spec, before anything is signalled."""
        if not isinstance(patch, SpecPatch):
            try:
                patch = SpecPatch.model_validate(patch or {})
            except ValidationError as invalid:
                raise BadRequest(validation_message(invalid)) from None
        handle = await self._handle(name)
        if (await self._describe(handle)).status is not WorkflowExecutionStatus.RUNNING:
            raise Conflict(f"the deployment {name!r} is stopped: deploy it again (POST /v1/deployments)")
        state = await self._state(name)
        try:
            patched = state.spec.patched(patch)
            refuse_unsafe(patched)
            refuse_outside_roots(patched, self.settings)
        except ValidationError as invalid:
            raise BadRequest(validation_message(invalid)) from None
        if patch.model is not None:  # a plain path, in a cluster: NODE:/path
            qualified = await qualify_model(patch.model, patched.node, await self.client())
            if qualified != patch.model:
                patch = patch.model_copy(update={"model": qualified})
        sealed = self._sealer.patch(name, patch)
        changes = sealed.model_dump(mode="json", exclude_unset=True)
        if changes and state.status is DeploymentStatus.DEPLOYED:
            # serving: the change rolls one instance at a time (the `reconfigure` update), no downtime
            await self._update(handle, name, RECONFIGURE_UPDATE, changes)
            return await self.get(name)
        try:
            await handle.signal(RETRY_SIGNAL, sealed.model_dump(mode="json", exclude_unset=True))
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                raise Conflict(f"the deployment {name!r} stopped meanwhile: deploy it again") from None
            raise rpc_error(error, name) from None
        return await self.get(name)

    async def scale(self, name: str, replicas: int) -> DeploymentState:
        """Run `replicas` instances (the workflow's `scale` update). Its validator refuses, with the
        reason and before anything changes, a count out of range or one the node's memory cannot
        hold: a BadRequest here."""
        handle = await self._handle(name)
        if (await self._describe(handle)).status is not WorkflowExecutionStatus.RUNNING:
            raise Conflict(f"the deployment {name!r} is stopped: deploy it again (POST /v1/deployments)")
        await self._update(handle, name, SCALE_UPDATE, {"replicas": replicas})
        return await self.get(name)

    async def _update(self, handle: WorkflowHandle, name: str, update: str, argument: dict) -> None:
        """A workflow update; its validator's refusal is a BadRequest with its reason."""
        try:
            await handle.execute_update(update, argument, rpc_timeout=UPDATE_TIMEOUT)
        except WorkflowUpdateFailedError as failed:
            cause = failed.cause
            message = getattr(cause, "message", None) or str(cause or failed)
            raise BadRequest(message) from None
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                raise Conflict(f"the deployment {name!r} stopped meanwhile: deploy it again") from None
            if error.status is RPCStatusCode.DEADLINE_EXCEEDED:
                raise Unavailable(f"no worker took the {update} in time: is `berth up` (its worker) running?") from None
            raise rpc_error(error, name) from None

    # ---- helpers -----------------------------------------------------------------------------------

    async def _handle(self, name: str) -> WorkflowHandle:
        if NAME_PATTERN.match(name) is None:
            raise NotFound(f"no deployment named {name!r}: names are DNS labels such as 'qwen-small'")
        return (await self.client()).get_workflow_handle(workflow_id(name))

    async def _describe(self, handle: WorkflowHandle):
        try:
            return await handle.describe()
        except RPCError as error:
            raise rpc_error(error, deployment_name(handle.id)) from None
