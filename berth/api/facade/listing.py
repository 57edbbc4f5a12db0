"""Listing deployments, a page at a time, from Temporal's visibility store.

GET /v1/deployments answers a page at a time. The dev server's visibility store costs ~1 ms per
row returned, whatever N (all of 1,000: 1.1-1.8 s; a page of 100: p50 105 ms, p99 260 ms with
1,000 deployments on 2 cores), so the whole list in one answer grew with N without bound; a page
does not, and one of 50 answers within 100 ms.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from datetime import datetime

from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError

from berth.api.facade.errors import BadRequest, rpc_error
from berth.domain.spec import NAME_PATTERN
from berth.domain.status import DeploymentStatus
from berth.domain.temporal_names import WORKFLOW_TYPE, workflow_id
from berth.workflows.deployment import BERTH_ENGINE, BERTH_MODEL, BERTH_REPLICAS, BERTH_STATUS

WORKFLOW_ID_PREFIX = workflow_id("")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class DeploymentSummary(BaseModel):
    """One row of the list, from Temporal's visibility store (search attributes)."""

    name: str
    status: DeploymentStatus
    engine: str | None = None
    model: str | None = None
    replicas: str | None = Field(None, description="instances that serve / instances asked for, e.g. 2/3")
    started_at: datetime | None = Field(default=None, description="when this deployment's workflow run started")


class DeploymentPage(BaseModel):
    """One page of the list; `next_page_token` asks for the next one (None: this was the last)."""

    deployments: list[DeploymentSummary]
    next_page_token: str | None = Field(
        default=None, description="pass as `page_token` for the next page; null on the last page"
    )


class DeploymentListing:
    """The pages of the list, with page tokens signed by this API process (PageTokens)."""

    def __init__(self) -> None:
        self._page_tokens = PageTokens()

    async def page(
        self,
        client: Client,
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
            query += f" AND BerthStatus = '{_status(status).value}'"
        next_page = self._page_tokens.temporal(page_token, query)
        pages = client.list_workflows(query, page_size=page_size, next_page_token=next_page)
        try:
            await pages.fetch_next_page()
        except RPCError as error:
            raise rpc_error(error) from None
        executions = [e for e in pages.current_page or [] if deployment_name(e.id) is not None]
        rows = await self._newest_only(client, executions)
        return DeploymentPage(
            deployments=[_summary(e) for e in rows], next_page_token=self._page_tokens.text(pages.next_page_token, query)
        )

    async def _newest_only(self, client: Client, executions: list[WorkflowExecution]) -> list[WorkflowExecution]:
        """Drop closed runs of a name that a newer run (of any status) supersedes: one visibility
        list over the names of the closed runs in the page, none when they are all running (only
        the newest run of a workflow id can be running)."""
        closed = {e.id for e in executions if e.status is not WorkflowExecutionStatus.RUNNING}
        if not closed:
            return executions
        ids = ", ".join(f"'{workflow_id_}'" for workflow_id_ in sorted(closed))
        newest = _newest_runs(
            [*executions, *await self._list(client, f"WorkflowType = '{WORKFLOW_TYPE}' AND WorkflowId IN ({ids})")]
        )
        return [e for e in executions if newest[e.id].run_id == e.run_id]

    async def _list(self, client: Client, query: str) -> list[WorkflowExecution]:
        found = []
        try:
            async for execution in client.list_workflows(query, page_size=MAX_PAGE_SIZE):
                if deployment_name(execution.id) is not None:
                    found.append(execution)
        except RPCError as error:
            raise rpc_error(error) from None
        return found


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


def _status(status: DeploymentStatus | str) -> DeploymentStatus:
    try:
        return DeploymentStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in DeploymentStatus)
        raise BadRequest(f"status: unknown status {status!r}; use one of {known}") from None


def deployment_name(workflow_id_: str) -> str | None:
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
        name=deployment_name(execution.id),
        status=DeploymentStatus(status) if status in DeploymentStatus.__members__ else DeploymentStatus.REQUESTED,
        engine=attributes.get(BERTH_ENGINE),
        model=attributes.get(BERTH_MODEL),
        replicas=attributes.get(BERTH_REPLICAS),
        started_at=execution.start_time,
    )
