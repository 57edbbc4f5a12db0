"""This node's engines by instance status, as the gauge `berth_instances{node, status}` on the
worker's metrics endpoint (berth.node.metrics; docs/observability.md says why the count is made
here and not by the API).

The worker knows its engines as they change, so it counts them as they change, in memory, without
reading a file or asking a workflow:
    STARTING  launched (launch_engine), not yet watched by supervise
    DEPLOYED  supervise watches it (it answered its readiness check)
    ERROR     supervise saw it exit or stop answering: the deployment is restarting or failing it
An engine leaves the count when it is stopped (stop_instance) or stopped for the node's shutdown.
Each reconcile pass (every BERTH_RECONCILE_INTERVAL_S) lines the count up with the engine records
on disk: a record the count lacks comes in as STARTING (a worker that restarted: supervise, resumed
on it, makes it DEPLOYED again within its first look), an instance without a record leaves.

Every change sets the three gauges of the node (zeros included), so a status that empties shows 0.
Thread-safe: launch and stop run in threads.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from berth.domain.metric_names import INSTANCES
from berth.domain.status import InstanceStatus
from berth.node import metrics
from berth.settings import Settings

STATUSES = (InstanceStatus.STARTING, InstanceStatus.DEPLOYED, InstanceStatus.ERROR)


class InstanceCounts:
    def __init__(self) -> None:
        self._status: dict[str, InstanceStatus] = {}
        self._lock = threading.Lock()
        self._node: str | None = None

    def set(self, instance_id: str, status: InstanceStatus, node: str | None = None) -> None:
        with self._lock:
            self._status[instance_id] = status
            self._publish(node)

    def forget(self, instance_id: str, node: str | None = None) -> None:
        with self._lock:
            if self._status.pop(instance_id, None) is not None:
                self._publish(node)

    def resync(self, recorded: Iterable[str], node: str | None = None) -> None:
        """Line up with the engine records on disk (reconcile): unknown ones come in as STARTING."""
        recorded = set(recorded)
        with self._lock:
            self._status = {i: s for i, s in self._status.items() if i in recorded}
            for instance_id in recorded - self._status.keys():
                self._status[instance_id] = InstanceStatus.STARTING
            self._publish(node)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return _counted(self._status.values())

    def clear(self) -> None:
        with self._lock:
            self._status.clear()

    def _publish(self, node: str | None) -> None:
        if node:
            self._node = node
        elif self._node is None:
            self._node = Settings.from_env().node_id
        for status, count in _counted(self._status.values()).items():
            metrics.record(INSTANCES, count, node=self._node, status=status)


def _counted(statuses: Iterable[InstanceStatus]) -> dict[str, int]:
    counted = Counter(statuses)
    return {status.value: counted.get(status, 0) for status in STATUSES}


# the worker process's one count (one worker serves one node)
COUNTS = InstanceCounts()
