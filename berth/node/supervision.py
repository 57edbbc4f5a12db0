"""Watching a serving engine: what supervise, the long activity behind DEPLOYED, does. It returns as
soon as the engine exits (a process: pidfd, no polling delay; a container: within a second) or stays
unhealthy, with the evidence; it heartbeats so that a dead worker is noticed and the activity
resumes on the next worker of this node, re-adopting the same engine.
"""

import os
import random
import time
from collections.abc import Callable

from berth.domain.pipeline import EngineHandle, EngineOutcome
from berth.engines.base import Readiness
from berth.engines.registry import get_engine
from berth.domain.metric_names import CRASH_DETECT
from berth.domain.status import InstanceStatus
from berth.node import metrics
from berth.node.engine_records import EngineRecord, EngineRecords
from berth.node.engine_targets import write_target
from berth.node.instance_counts import COUNTS
from berth.node.engine_watch import EngineView, HeldExitWatch
from berth.node.probe_client import probe_client
from berth.settings import Settings

HEALTH_INTERVAL_S = 5.0
# Each wait is drawn within +-10% of that. Loops that a stall of the worker bunched together (every
# wait that ended during it goes on at once after it) drift apart again, instead of probing in step
# for as long as they supervise: with 1000 supervised stand-ins, waves every 5 s held the event loop
# for 20-50 ms, and a state query arriving then waited.
HEALTH_INTERVAL_JITTER = 0.1
UNHEALTHY_PROBES = 3  # consecutive failed probes before the engine is declared unhealthy


async def watch_engine(handle: EngineHandle, heartbeat: Callable[[float], None]) -> EngineOutcome:
    """Until the engine exits, is stopped by a node shutdown, or fails UNHEALTHY_PROBES health
    checks in a row; `heartbeat` is called with the seconds served after each look."""
    engine = get_engine(handle.engine)
    base_url = f"http://127.0.0.1:{handle.port}"
    since = time.time()
    failed_probes: list[Readiness] = []
    settings = Settings.from_env()
    records = EngineRecords(settings.run_dir)
    first = EngineView.of(handle, records)
    watch = HeldExitWatch.open(first.record)  # None: ask the view each time
    if first.record is not None and engine.metrics_path:
        write_target(settings.home, handle.deployment, handle.instance_id, settings.node_id, engine.name, handle.port)
    if first.record is not None:
        COUNTS.set(handle.instance_id, InstanceStatus.DEPLOYED, settings.node_id)  # berth_instances
    try:
        while True:
            view = EngineView.of(handle, records)  # read again: a shutdown or another launch shows there
            served_s = time.time() - since
            if view.stopped_by_shutdown:
                COUNTS.forget(handle.instance_id, settings.node_id)
                return EngineOutcome(node_shutdown=True, served_s=served_s)
            if not view.alive(watch):
                failure = view.exit_failure()
                _record_detection(view.record, settings.node_id)
                COUNTS.set(handle.instance_id, InstanceStatus.ERROR, settings.node_id)
                return EngineOutcome(failure=failure, served_s=served_s)
            readiness = await engine.probe(probe_client(), base_url, after_ready=True)
            if readiness is Readiness.READY:
                failed_probes.clear()
            else:
                failed_probes.append(readiness)
                if len(failed_probes) >= UNHEALTHY_PROBES:
                    seen = ", ".join(probe.value.lower() for probe in failed_probes)
                    message = f"the engine is running but stopped answering its health check ({seen})"
                    COUNTS.set(handle.instance_id, InstanceStatus.ERROR, settings.node_id)
                    return EngineOutcome(failure=view.unhealthy_failure(message), served_s=served_s)
            heartbeat(served_s)
            await view.wait_for_exit(next_look_in_s(), watch)
    finally:
        if watch:
            watch.close()


def _record_detection(record: EngineRecord | None, node: str) -> None:
    """How long after the engine's process ended supervise reports it: from the exit file the
    engine's wrapper writes when it ends (processes only; a container's end is not timed)."""
    if record is None or not record.exit_file:
        return
    try:
        ended = os.stat(record.exit_file).st_mtime
    except OSError:
        return
    metrics.record(CRASH_DETECT, max(0.0, time.time() - ended), node=node, engine=record.engine)


def next_look_in_s() -> float:
    return HEALTH_INTERVAL_S * random.uniform(1 - HEALTH_INTERVAL_JITTER, 1 + HEALTH_INTERVAL_JITTER)
