"""The cluster as its workflow sees it: the `nodes` query of `berth-cluster` (berth.domain.cluster),
asked at most once per CACHE_S however many callers want it (GET /metrics, the console's Nodes page).

One query answers every node's facts, status and reservations, whatever the number of deployments:
no deployment workflow is asked anything. Concurrent callers share the query in flight; an answer
is reused for CACHE_S (scrapes of several Prometheus servers, the console's polling tabs).

No cluster workflow (a worker older than the cluster, or none started yet), a worker that does not
answer within QUERY_TIMEOUT, a query the workflow does not know: `None`, with the reason kept in
`reason` (logged once per change). The callers leave the nodes out then; they never fail for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from temporalio.client import Client, WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.service import RPCError, RPCStatusCode

from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODES_QUERY, ClusterView

log = logging.getLogger(__name__)
CACHE_S = 1.0
# a worker that is down leaves a query waiting: a scrape must not wait with it for long
QUERY_TIMEOUT = timedelta(seconds=2)
NO_CLUSTER = "no cluster workflow: the worker that starts it (berth up, berth join) has not run yet"


class ClusterViews:
    def __init__(self, cache_s: float = CACHE_S) -> None:
        self.cache_s = cache_s
        self._last: tuple[float, ClusterView | None] | None = None  # (when it was answered, the view)
        self._asking: asyncio.Task | None = None
        self.reason: str | None = None  # why the last answer is None
        self.queries = 0  # how many queries were sent (the tests count them)

    async def view(self, client: Client, fresh: bool = False) -> ClusterView | None:
        """The view, at most CACHE_S old (`fresh`: asked now, e.g. after a drain); None when the
        cluster workflow does not answer (`reason` says why)."""
        if not fresh and self._last is not None and time.monotonic() - self._last[0] < self.cache_s:
            return self._last[1]
        if self._asking is None or self._asking.done() or fresh:
            self._asking = asyncio.create_task(self._ask(client))
        return await asyncio.shield(self._asking)

    def forget(self) -> None:
        self._last = None

    async def _ask(self, client: Client) -> ClusterView | None:
        self.queries += 1
        view, reason = None, None
        try:
            handle = client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
            view = await handle.query(NODES_QUERY, result_type=ClusterView, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as error:
            reason = NO_CLUSTER if error.status is RPCStatusCode.NOT_FOUND else f"Temporal: {error.message}"
        except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as error:
            reason = f"the cluster workflow did not answer its {NODES_QUERY!r} query: {error}"
        except asyncio.TimeoutError:
            reason = "the cluster workflow did not answer in time"
        except ValueError as error:  # an answer of another shape (a newer or older cluster workflow)
            reason = f"the cluster workflow's answer is not a ClusterView: {str(error)[:200]}"
        if reason != self.reason and reason is not None:
            log.info("no cluster view: %s", reason)
        self.reason = reason
        self._last = (time.monotonic(), view)
        return view


def cluster_views(app_state) -> ClusterViews:
    """The API process's one ClusterViews (on app.state), made on first use."""
    views = getattr(app_state, "cluster_views", None)
    if views is None:
        views = app_state.cluster_views = ClusterViews()
    return views
