"""How many deployments are in each status, per engine: counts from Temporal's visibility store,
never a query to each workflow (what GET /metrics serves).

Temporal's CountWorkflowExecutions groups only by ExecutionStatus (the dev server 1.32 answers
"'GROUP BY' clause is not supported for search attribute BerthStatus", and "supports only a single
field"), so this is one count per status, side by side, then, for each status that has any, one
per engine: at most 8 + 8 x 3 counts, each an indexed COUNT in the visibility store (the ones of a
status with none are skipped). Deployments not yet given an engine count as engine "none". Only
running workflows are counted: a stopped deployment's workflow has closed (its history remains).
Answers are kept CACHE_S, so that scrapes close together cost one round of counts.
"""

from __future__ import annotations

import asyncio
import time

from temporalio.client import Client

from berth.domain.status import DeploymentStatus
from berth.domain.temporal_names import WORKFLOW_TYPE
from berth.engines.registry import ENGINES

CACHE_S = 1.0
NO_ENGINE = "none"
RUNNING = f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"


class DeploymentCounts:
    def __init__(self) -> None:
        self._cached: tuple[float, dict[tuple[str, str], int], float] | None = None
        self._counting: asyncio.Future | None = None

    async def counts(self, client: Client) -> tuple[dict[tuple[str, str], int], float]:
        """{(status, engine): count} for every status and engine (zeros included), and how many
        seconds the counting took."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_S:
            return self._cached[1], self._cached[2]
        if self._counting is None or self._counting.done():
            self._counting = asyncio.ensure_future(self._count(client))
        counts, took = await asyncio.shield(self._counting)
        self._cached = (time.monotonic(), counts, took)
        return counts, took

    async def _count(self, client: Client) -> tuple[dict[tuple[str, str], int], float]:
        started = time.monotonic()
        statuses = [status.value for status in DeploymentStatus]
        totals = await asyncio.gather(*(_count(client, f"{RUNNING} AND BerthStatus = '{s}'") for s in statuses))
        counts: dict[tuple[str, str], int] = {}
        asks = []
        for status, total in zip(statuses, totals):
            for engine in ENGINES:
                counts[(status, engine)] = 0
            counts[(status, NO_ENGINE)] = total
            if total:
                asks += [(status, engine) for engine in ENGINES]
        found = await asyncio.gather(
            *(_count(client, f"{RUNNING} AND BerthStatus = '{s}' AND BerthEngine = '{e}'") for s, e in asks)
        )
        for (status, engine), count in zip(asks, found):
            counts[(status, engine)] = count
            counts[(status, NO_ENGINE)] -= count
        return counts, time.monotonic() - started


async def _count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count
