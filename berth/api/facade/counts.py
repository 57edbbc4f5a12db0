"""How many deployments are in each status, per engine: counts from Temporal's visibility store,
never a query to each workflow (what GET /metrics serves).

Temporal's CountWorkflowExecutions groups only by ExecutionStatus (the dev server 1.32 answers
"'GROUP BY' clause is not supported for search attribute BerthStatus", and "supports only a single
field"), so this is one count per status, side by side, then, for each status that has any, one
per engine: at most 8 + 8 x 3 counts, each an indexed COUNT in the visibility store (the ones of a
status with none are skipped). Deployments not yet given an engine count as engine "none". Only
running workflows are counted: a stopped deployment's workflow has closed (its history remains).

Those counts are not cheap on the dev server's SQLite visibility store: with 1,000 deployments a
round of them took p50 173 ms, max 873 ms (40 scrapes on 2 busy cores), over the 100 ms a scrape
may take. So a scrape answers from the last round at once and, when that round is over CACHE_S old,
starts the next one in the background: the numbers a scrape gets are those of the scrape before
(with Prometheus's 15 s, at most ~15 s old, and Temporal's visibility trails by ~1 s more), and
`berth_metrics_counts_age_seconds` says how old they are. Only the very first scrape waits for
its round. No scrape, no counting: an idle API costs Temporal nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

from temporalio.client import Client

from berth.domain.status import DeploymentStatus
from berth.domain.temporal_names import WORKFLOW_TYPE
from berth.engines.registry import ENGINES

log = logging.getLogger(__name__)
CACHE_S = 1.0
NO_ENGINE = "none"
RUNNING = f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"


class Counted(NamedTuple):
    counts: dict[tuple[str, str], int]  # {(status, engine): count}, zeros included
    took_s: float  # how long the round of counts took
    age_s: float  # how long ago it ended


class DeploymentCounts:
    def __init__(self) -> None:
        self._last: tuple[float, dict[tuple[str, str], int], float] | None = None  # (ended, counts, took)
        self._counting: asyncio.Task | None = None

    async def counts(self, client: Client) -> Counted:
        """The last round of counts (the first time: a fresh one); a new round starts in the
        background when that one is older than CACHE_S. A failed round raises at the next call
        only while there is no earlier round to answer with."""
        if self._counting is None or self._counting.done():
            stale = self._last is None or time.monotonic() - self._last[0] >= CACHE_S
            if stale:
                self._counting = asyncio.create_task(self._round(client))
                self._counting.add_done_callback(_log_failure)
        if self._last is None:
            await asyncio.shield(self._counting)
        ended, counts, took = self._last
        return Counted(counts, took, time.monotonic() - ended)

    async def _round(self, client: Client) -> None:
        counts, took = await self._count(client)
        self._last = (time.monotonic(), counts, took)

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


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("counting the deployments failed: %s", task.exception())


async def _count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count
