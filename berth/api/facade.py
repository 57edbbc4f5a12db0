"""Deployments as Temporal sees them: the one client facade that the REST API (and tests) use.

Every operation is a Temporal call on the workflow `deployment-<name>`: start it, list it from
visibility (search attributes), query its `state`, signal `stop` or `retry`. Input is checked
here before anything reaches Temporal; what goes wrong is one of the typed errors below, which
the API turns into status codes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from berth.domain.diagnostics import mark_lines
from berth.domain.errors import ErrorCode
from berth.domain.spec import NAME_PATTERN, DeploymentSpec, SpecPatch
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus
from berth.domain.temporal_names import RETRY_SIGNAL, STATE_QUERY, STOP_SIGNAL, WORKFLOW_TYPE, workflow_id
from berth.engines.engine_args import spec_refusal
from berth.engines.registry import ENGINES
from berth.settings import CONTROL_TASK_QUEUE, Settings
from berth.temporal_connection import connect
from berth.workflows.deployment import BERTH_ENGINE, BERTH_MODEL, BERTH_STATUS, DeploymentInput

WORKFLOW_ID_PREFIX = workflow_id("")
QUERY_TIMEOUT = timedelta(seconds=10)
MAX_TAIL = 10_000
# GET /v1/deployments answers a page at a time. The dev server's visibility store costs ~1 ms per
# row returned, whatever N (all of 1,000: 1.1-1.8 s; a page of 100: p50 105 ms, p99 260 ms with
# 1,000 deployments on 2 cores), so the whole list in one answer grew with N without bound; a page
# does not, and one of 50 answers within 100 ms.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# A workflow that has torn down (STOPPED) but not yet returned is done within moments.
CLOSING_WAIT_S = 10.0


# ---- errors ----------------------------------------------------------------------------------------


class DeploymentsError(Exception):
    """A request the facade refuses; `code` is the machine-readable name of the reason."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(DeploymentsError):
    code = "invalid_request"


class NotFound(DeploymentsError):
    code = "not_found"


class Conflict(DeploymentsError):
    code = "conflict"


class Unavailable(DeploymentsError):
    """Temporal or the berth worker does not answer."""

    code = "unavailable"


# ---- answers ---------------------------------------------------------------------------------------


class DeploymentSummary(BaseModel):
    """One row of the list, from Temporal's visibility store (search attributes)."""

    name: str
    status: DeploymentStatus
    engine: str | None = None
    model: str | None = None


class DeploymentPage(BaseModel):
    """One page of the list; `next_page_token` asks for the next one (None: this was the last)."""

    deployments: list[DeploymentSummary]
    next_page_token: str | None = Field(
        default=None, description="pass as `page_token` for the next page; null on the last page"
    )


class LogIssue(BaseModel):
    """A log line that matched a failure pattern."""

    line: int = Field(description="0-based index into `lines`")
    text: str
    code: ErrorCode
    description: str


class DeploymentLogs(BaseModel):
    name: str
    path: str | None = Field(description="the engine log on its node; None before the first launch")
    lines: list[str]
    issues: list[LogIssue] = Field(description="the lines that match a known failure pattern")
    offset: int = Field(description="byte offset after the last line: pass it back to read only newer lines")


def refuse_unsafe(spec: DeploymentSpec) -> None:
    """BadRequest naming each env variable and engine flag that the node would refuse to run, under
    this API's BERTH_ALLOW_UNSAFE_ENV / BERTH_ALLOW_UNSAFE_ENGINE_ARGS (the node checks again)."""
    refusal = spec_refusal(spec.engine, spec.engine_args, spec.env, os.environ)
    if refusal:
        raise BadRequest(refusal)


def describe_problem(error: dict, field: str) -> str:
    """'field: what is wrong (got X)' for one pydantic error, in words that say what to change."""
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = "unknown field; remove it (see /docs for the fields this request takes)"
    elif kind == "missing":
        message = "required field is missing"
    elif "input" in error and kind not in ("model_attributes_type", "dict_type", "value_error"):
        message += f" (got {json.dumps(error['input'], default=str)[:100]})"
    return f"{field}: {message}" if field else message


def validation_message(invalid: ValidationError) -> str:
    """One clause per problem, each naming its field: 'context_size: Input should be ... (got -1)'."""
    return "; ".join(
        describe_problem(error, ".".join(str(part) for part in error["loc"])) for error in invalid.errors()
    )


# ---- the facade ------------------------------------------------------------------------------------


class Deployments:
    """Deploy, list, inspect, stop and retry deployments; read their logs."""

    def __init__(self, settings: Settings, client: Client | None = None):
        self.settings = settings
        self._client = client
        self._connecting = asyncio.Lock()
        self._page_tokens = PageTokens()

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
        STOPPED; a STOPPED (closed) one is replaced by a new run."""
        refuse_unsafe(spec)
        client = await self.client()
        for _ in range(2):
            try:
                handle = await client.start_workflow(
                    WORKFLOW_TYPE,
                    DeploymentInput(spec=spec),
                    id=workflow_id(spec.name),
                    task_queue=CONTROL_TASK_QUEUE,
                    # a closed run (stopped) may be followed by a new one; a running one may not
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    # listed at once, before the workflow's first step upserts the same
                    search_attributes=TypedSearchAttributes(
                        [
                            SearchAttributePair(BERTH_STATUS, DeploymentStatus.REQUESTED.value),
                            SearchAttributePair(BERTH_MODEL, spec.model[:2048]),
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
                raise self._rpc_error(error, spec.name) from None
            return await self._state_after_start(handle, spec)
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

    # ---- read --------------------------------------------------------------------------------------

    async def list(
        self,
        status: DeploymentStatus | str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> DeploymentPage:
        """One page of the deployments in Temporal's visibility store, optionally of one status:
        running ones first, newest first, then stopped ones, most recently stopped first.

        Served from the visibility records alone (name, and the search attributes BerthStatus,
        BerthEngine, BerthModel), never by asking each workflow. Of several runs of one name only
        the newest speaks for it: an older, closed run in the page is dropped, so a page may hold
        fewer than `page_size` rows. Visibility trails the workflows by about a second.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise BadRequest(f"page_size: ask for 1 to {MAX_PAGE_SIZE} deployments (got {page_size})")
        query = f"WorkflowType = '{WORKFLOW_TYPE}'"
        if status is not None:
            query += f" AND BerthStatus = '{self._status(status).value}'"
        next_page = self._page_tokens.temporal(page_token, query)
        client = await self.client()
        pages = client.list_workflows(query, page_size=page_size, next_page_token=next_page)
        try:
            await pages.fetch_next_page()
        except RPCError as error:
            raise self._rpc_error(error) from None
        executions = [e for e in pages.current_page or [] if _deployment_name(e.id) is not None]
        rows = await self._newest_only(executions)
        return DeploymentPage(
            deployments=[_summary(e) for e in rows], next_page_token=self._page_tokens.text(pages.next_page_token, query)
        )

    async def _newest_only(self, executions: list[WorkflowExecution]) -> list[WorkflowExecution]:
        """Drop closed runs of a name that a newer run (of any status) supersedes: one visibility
        list over the names of the closed runs in the page, none when they are all running (only
        the newest run of a workflow id can be running)."""
        closed = {e.id for e in executions if e.status is not WorkflowExecutionStatus.RUNNING}
        if not closed:
            return executions
        ids = ", ".join(f"'{workflow_id_}'" for workflow_id_ in sorted(closed))
        newest = _newest_runs(
            [*executions, *await self._list(f"WorkflowType = '{WORKFLOW_TYPE}' AND WorkflowId IN ({ids})")]
        )
        return [e for e in executions if newest[e.id].run_id == e.run_id]

    async def _list(self, query: str) -> list[WorkflowExecution]:
        client = await self.client()
        found = []
        try:
            async for execution in client.list_workflows(query, page_size=MAX_PAGE_SIZE):
                if _deployment_name(execution.id) is not None:
                    found.append(execution)
        except RPCError as error:
            raise self._rpc_error(error) from None
        return found

    async def get(self, name: str) -> DeploymentState:
        """The deployment's whole state (the workflow's `state` query)."""
        handle = await self._handle(name)
        try:
            return await handle.query(STATE_QUERY, result_type=DeploymentState, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as error:
            raise self._rpc_error(error, name) from None

    async def logs(self, name: str, tail: int = 100, offset: int | None = None) -> DeploymentLogs:
        """The last `tail` lines of the deployment's engine log (those written at or after byte
        `offset`, when given) and the failure patterns found in them.

        Single-node for now: the file named in the state (`instances[0].log_path`) is read from
        this machine's disk, which is where `berth up` runs the engines. A multi-node berth will
        read it through an activity on the instance's node queue instead.
        """
        if not 1 <= tail <= MAX_TAIL:
            raise BadRequest(f"tail: ask for 1 to {MAX_TAIL} lines (got {tail})")
        if offset is not None and offset < 0:
            raise BadRequest(f"offset: must be 0 or more (got {offset})")
        state = await self.get(name)
        path = state.instances[0].log_path if state.instances else None
        lines, next_offset = await asyncio.to_thread(_read_log, path, tail, offset or 0)
        engine = ENGINES.get(state.engine or "")
        marked = mark_lines(lines, engine.log_patterns if engine else ())
        return DeploymentLogs(
            name=name,
            path=path,
            lines=lines,
            issues=[LogIssue(line=m.index, text=m.text, code=m.code, description=m.description) for m in marked],
            offset=next_offset,
        )

    # ---- change ------------------------------------------------------------------------------------

    async def stop(self, name: str) -> DeploymentState:
        """Ask the deployment to stop (engine, route and port are released); already stopped is fine."""
        handle = await self._handle(name)
        if (await self._describe(handle)).status is WorkflowExecutionStatus.RUNNING:
            try:
                await handle.signal(STOP_SIGNAL)
            except RPCError as error:
                if error.status is not RPCStatusCode.NOT_FOUND:  # it finished meanwhile: stopped
                    raise self._rpc_error(error, name) from None
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
        state = await self.get(name)
        try:
            refuse_unsafe(state.spec.patched(patch))
        except ValidationError as invalid:
            raise BadRequest(validation_message(invalid)) from None
        try:
            await handle.signal(RETRY_SIGNAL, patch.model_dump(mode="json", exclude_unset=True))
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                raise Conflict(f"the deployment {name!r} stopped meanwhile: deploy it again") from None
            raise self._rpc_error(error, name) from None
        return await self.get(name)

    # ---- helpers -----------------------------------------------------------------------------------

    async def _handle(self, name: str) -> WorkflowHandle:
        if NAME_PATTERN.match(name) is None:
            raise NotFound(f"no deployment named {name!r}: names are DNS labels such as 'qwen-small'")
        return (await self.client()).get_workflow_handle(workflow_id(name))

    async def _describe(self, handle: WorkflowHandle):
        try:
            return await handle.describe()
        except RPCError as error:
            raise self._rpc_error(error, _deployment_name(handle.id)) from None

    def _rpc_error(self, error: RPCError, name: str | None = None) -> Exception:
        if error.status is RPCStatusCode.NOT_FOUND and name is not None:
            return NotFound(f"no deployment named {name!r}: see GET /v1/deployments for the names")
        if error.status is RPCStatusCode.INVALID_ARGUMENT:
            return BadRequest(error.message)
        if error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return Unavailable(
                f"Temporal or the berth worker did not answer in time ({error.message}): "
                "is `berth up` running?"
            )
        return error  # not the caller's fault: the API's catch-all logs it and answers 500

    @staticmethod
    def _status(status: DeploymentStatus | str) -> DeploymentStatus:
        try:
            return DeploymentStatus(status)
        except ValueError:
            known = ", ".join(s.value for s in DeploymentStatus)
            raise BadRequest(f"status: unknown status {status!r}; use one of {known}") from None


class PageTokens:
    """REST page tokens: Temporal's next_page_token, signed, in URL-safe base64.

    Temporal does not check a token it did not make: a garbled one is an internal error, which
    its client retries for ~10 s. A token whose signature does not match is refused here (400)
    instead. The key lives as long as the API process: after a restart, listing starts again."""

    SIGNATURE_BYTES = 12

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _sign(self, token: bytes, query: str) -> bytes:
        """Over the token and the list's query: a token is only good for the list it came from."""
        return hmac.new(self._key, query.encode() + b"\0" + token, hashlib.sha256).digest()[: self.SIGNATURE_BYTES]

    def text(self, next_page_token: bytes | None, query: str) -> str | None:
        if not next_page_token:
            return None
        signed = self._sign(next_page_token, query) + next_page_token
        return base64.urlsafe_b64encode(signed).decode().rstrip("=")

    def temporal(self, page_token: str | None, query: str) -> bytes | None:
        if not page_token:
            return None
        try:
            raw = base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        signature, token = raw[: self.SIGNATURE_BYTES], raw[self.SIGNATURE_BYTES :]
        if not token or not hmac.compare_digest(signature, self._sign(token, query)):
            raise BadRequest(
                "page_token: not a token of this list (another status?) or the API restarted since; "
                "list again without it"
            )
        return token


def _deployment_name(workflow_id_: str) -> str | None:
    name = workflow_id_.removeprefix(WORKFLOW_ID_PREFIX)
    if name == workflow_id_ or NAME_PATTERN.match(name) is None:
        return None
    return name


def _started(execution: WorkflowExecution):
    return execution.start_time


def _newest_runs(executions: list[WorkflowExecution]) -> dict[str, WorkflowExecution]:
    newest: dict[str, WorkflowExecution] = {}
    for execution in executions:
        if execution.id not in newest or _started(execution) > _started(newest[execution.id]):
            newest[execution.id] = execution
    return newest


def _summary(execution: WorkflowExecution) -> DeploymentSummary:
    attributes = execution.typed_search_attributes
    status = attributes.get(BERTH_STATUS) or DeploymentStatus.REQUESTED.value
    return DeploymentSummary(
        name=_deployment_name(execution.id),
        status=DeploymentStatus(status) if status in DeploymentStatus.__members__ else DeploymentStatus.REQUESTED,
        engine=attributes.get(BERTH_ENGINE),
        model=attributes.get(BERTH_MODEL),
    )


def _read_log(path: str | None, tail: int, offset: int) -> tuple[list[str], int]:
    """The last `tail` whole lines at or after byte `offset`, and the offset after them.

    A half-written last line is left for the next read; a file shorter than `offset` (replaced)
    is read from its start.
    """
    if path is None:
        return [], 0
    try:
        with open(Path(path), "rb") as handle:
            size = handle.seek(0, 2)
            start = offset if offset <= size else 0
            handle.seek(start)
            lines: deque[bytes] = deque(maxlen=tail)
            end = start
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                lines.append(raw)
                end += len(raw)
    except FileNotFoundError:
        return [], 0
    return [line.decode("utf-8", "replace").rstrip("\r\n") for line in lines], end
