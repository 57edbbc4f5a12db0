"""The rows of the console's deployments table: one page of the API's listing (visibility records,
berth.api.facade.listing), and for each row what a user scans for.

The listing holds name, status, engine, model and start time; the rest comes without asking every
workflow: the endpoint of a DEPLOYED row is the gateway's route for its name, replicas ready and
desired come from the row when the listing has them (else 1/1 when DEPLOYED, 0/1 otherwise). Only
rows that failed are asked for their state (the error code and its one-line message), at most
ERROR_QUERIES_AT_ONCE at a time, each within QUERY_TIMEOUT_S, and cached per run and status for
ERROR_CACHE_S: a table of 1,000 healthy deployments costs one listing call per page.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from berth.api.facade import DeploymentSummary, Deployments
from berth.domain.status import DeploymentStatus

FAILED_STATUSES = frozenset({DeploymentStatus.ERROR, DeploymentStatus.FAILED, DeploymentStatus.MUST_REDOWNLOAD})
STATUS_CLASS = {
    DeploymentStatus.DEPLOYED: "ok",
    DeploymentStatus.REQUESTED: "busy",
    DeploymentStatus.DEPLOYING: "busy",
    DeploymentStatus.INITIALIZING: "busy",
    DeploymentStatus.STOPPED: "idle",
    DeploymentStatus.ERROR: "warn",
    DeploymentStatus.FAILED: "bad",
    DeploymentStatus.MUST_REDOWNLOAD: "bad",
}
QUERY_TIMEOUT_S = 1.0
ERROR_QUERIES_AT_ONCE = 8
ERROR_CACHE_S = 3.0
MESSAGE_CHARS = 160


@dataclass
class Row:
    name: str
    status: str
    status_class: str
    engine: str
    model: str
    replicas: str
    endpoint: str | None
    age: str
    error_code: str | None = None
    error_message: str | None = None


def age_text(started: datetime | None, now: datetime | None = None) -> str:
    """'12s', '5m', '3h', '2d'; '' when unknown."""
    if started is None:
        return ""
    now = now or datetime.now(timezone.utc)
    seconds = max(0, int((now - started).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def replicas_text(summary: object, status: DeploymentStatus) -> str:
    """ready/desired from the listing when it carries them (the replicas work), else 1/1 or 0/1."""
    desired = getattr(summary, "replicas", None)
    ready = getattr(summary, "ready_replicas", None)
    if isinstance(desired, int) and isinstance(ready, int):
        return f"{ready}/{desired}"
    return "1/1" if status is DeploymentStatus.DEPLOYED else "0/1"


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class RowBuilder:
    """Rows for one page; remembers the errors of failed rows for a few seconds."""

    def __init__(self, facade: Deployments, gateway_url: str):
        self.facade = facade
        self.gateway_url = gateway_url.rstrip("/")
        self._errors: dict[tuple, tuple[float, str | None, str | None]] = {}
        self._gate = asyncio.Semaphore(ERROR_QUERIES_AT_ONCE)

    async def rows(self, summaries: list[DeploymentSummary]) -> list[Row]:
        rows = [self._row(s) for s in summaries]
        failed = [(row, s) for row, s in zip(rows, summaries) if s.status in FAILED_STATUSES]
        await asyncio.gather(*(self._add_error(row, s) for row, s in failed))
        return rows

    def _row(self, summary: DeploymentSummary) -> Row:
        status = summary.status
        return Row(
            name=summary.name,
            status=status.value,
            status_class=STATUS_CLASS.get(status, "idle"),
            engine=summary.engine or "",
            model=summary.model or "",
            replicas=replicas_text(summary, status),
            endpoint=f"{self.gateway_url}/models/{summary.name}/v1" if status is DeploymentStatus.DEPLOYED else None,
            age=age_text(getattr(summary, "started_at", None)),
        )

    async def _add_error(self, row: Row, summary: DeploymentSummary) -> None:
        key = (summary.name, getattr(summary, "started_at", None), summary.status)
        now = time.monotonic()
        cached = self._errors.get(key)
        if cached is None or now - cached[0] > ERROR_CACHE_S:
            code, message = await self._error_of(summary.name)
            if len(self._errors) > 4096:
                self._errors.clear()
            cached = self._errors[key] = (now, code, message)
        row.error_code, row.error_message = cached[1], cached[2]

    async def _error_of(self, name: str) -> tuple[str | None, str | None]:
        async with self._gate:
            try:
                state = await asyncio.wait_for(self.facade.get(name), QUERY_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - the row shows its status without the detail
                return None, None
        if state.error is None:
            return None, None
        return state.error.code.value, one_line(state.error.message)
