"""Take over, at start, the node's activities that a dead worker of this node still holds.

Temporal gives a running activity to another worker only once its heartbeat timeout has passed
without a heartbeat. supervise's timeout is long (heartbeats are what Temporal's CPU goes to
while deployments are supervised: measured at 400 of them, 24% of a core at 15 s, 6% at 60 s),
so a worker restarted after a crash would otherwise wait up to that long before it watches the
node's engines again. Instead, once the new worker polls, it asks Temporal about every deployment
with an engine record on this node and fails the attempt that a dead worker of this node holds:
Temporal retries it at once, here, and the retried supervise re-adopts the same engine.

"Dead" is decided here, on this host only: the holder's identity is Temporal's `pid@host`; its host
is this one, and that pid is gone or is not a berth worker of this home. A holder on another host,
or alive, is left alone (its heartbeats, or its timeout, settle it).
"""

import asyncio
import logging
import socket
from pathlib import Path

import psutil
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from berth.domain.temporal_names import workflow_id
from berth.node.engine_records import EngineRecords
from berth.settings import Settings

log = logging.getLogger(__name__)

WORKER_MODULE = "berth.worker.main"
CONCURRENT_DESCRIBES = 4  # a restart with hundreds of deployments must not crowd out everything else
TAKEN_OVER = "WorkerLost"  # the failure type Temporal records for the attempt taken over


def holder_is_dead(identity: str, home: Path) -> bool:
    """Whether the worker named by a Temporal identity (`pid@host`) is a dead worker of this node."""
    pid_text, _, host = identity.partition("@")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        process = psutil.Process(int(pid_text))
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        return not (WORKER_MODULE in " ".join(process.cmdline()) and process.environ().get("BERTH_HOME") == str(home))
    except psutil.Error:  # gone, or another user's process (then not a worker of this home either)
        return True


async def take_over_from_dead_workers(client: Client, settings: Settings) -> list[str]:
    """Fail the attempts that dead workers of this node hold; returns '<deployment>/<activity type>'
    for each one taken over."""
    deployments = sorted({record.deployment for record in EngineRecords(settings.run_dir).all()})
    gate = asyncio.Semaphore(CONCURRENT_DESCRIBES)
    taken: list[str] = []

    async def one(deployment: str) -> None:
        async with gate:
            handle = client.get_workflow_handle(workflow_id(deployment))
            try:
                description = await handle.describe()
            except RPCError:
                return  # gone, or Temporal busy: the heartbeat timeout still covers it
            if description.status is not WorkflowExecutionStatus.RUNNING:
                return
            for pending in description.raw_description.pending_activities:
                holder = pending.last_worker_identity
                if (
                    pending.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                    or not holder
                    or holder == client.identity
                    or not holder_is_dead(holder, settings.home)
                ):
                    continue
                message = f"the worker {holder} that ran this attempt died; {client.identity} took it over"
                try:
                    await client.get_async_activity_handle(
                        workflow_id=handle.id, run_id=description.run_id, activity_id=pending.activity_id
                    ).fail(ApplicationError(message, type=TAKEN_OVER))
                except RPCError as error:  # it moved on meanwhile (finished, timed out, cancelled)
                    log.info("takeover: %s %s: %s", deployment, pending.activity_type.name, error)
                    continue
                taken.append(f"{deployment}/{pending.activity_type.name}")

    await asyncio.gather(*(one(deployment) for deployment in deployments))
    if taken:
        log.info("took over %d activities from a dead worker: %s", len(taken), ", ".join(taken[:20]))
    return taken
