"""The node's presence in the cluster, as its worker sees it (docs/cluster.md): the presence
activity (berth.activities.cluster.node_presence) heartbeats through `keep_alive` until cancelled;
when a heartbeat is refused (the cluster no longer waits for it: the node was declared DOWN, or the
cluster workflow continued as new) the worker's hook runs (berth.worker.cluster_join fences the
node, then joins again). One worker per process: the hook is this module's."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

log = logging.getLogger(__name__)
NODE_STOPPING = "NodeWorkerStopping"

_incarnation: str | None = None
_on_lost: Callable[[str], Awaitable[None]] | None = None
_tasks: set[asyncio.Task] = set()


def register(incarnation: str, on_lost: Callable[[str], Awaitable[None]]) -> None:
    """This worker's incarnation, and what it does when its presence is lost."""
    global _incarnation, _on_lost
    _incarnation, _on_lost = incarnation, on_lost


async def keep_alive(node: str, incarnation: str, grace_s: float) -> None:
    """Heartbeat every quarter of the grace until cancelled (inside the presence activity)."""
    if _incarnation is not None and incarnation != _incarnation:
        return  # an earlier worker's presence (it died): this worker joined with its own
    interval = max(0.2, grace_s / 4)
    try:
        while True:
            activity.heartbeat()
            await asyncio.sleep(interval)
    except asyncio.CancelledError:
        details = activity.cancellation_details()
        if details is not None and details.worker_shutdown:
            raise ApplicationError("the node's worker is stopping", type=NODE_STOPPING, non_retryable=True) from None
        if (details is None or not details.cancel_requested) and _on_lost is not None:
            why = "refused" if details and details.not_found else "timed out"
            log.warning("presence of node %s %s: the cluster may have declared it DOWN", node, why)
            task = asyncio.get_running_loop().create_task(_on_lost(why))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)
        raise
