"""How a download's progress reaches the user: heartbeats to Temporal, signals to the deployment.

The heartbeat carries the latest DownloadProgress (and is how a stop reaches a download: the
cancellation comes back in a heartbeat's answer). The deployment's `state` query shows progress
because the activity signals it to its own workflow, sparingly: each signal is history, so at most
one per SIGNAL_EVERY_S and only when the figure moved by a whole percent (or SIGNAL_IDLE_S passed),
about a hundred per download whatever its size.
"""

import asyncio
import time

from temporalio import activity

from berth.domain.metric_names import DOWNLOAD_BYTES, DOWNLOAD_SECONDS
from berth.domain.state import DownloadProgress
from berth.node import metrics
from berth.settings import Settings
from berth.domain.temporal_names import DOWNLOAD_PROGRESS_SIGNAL

SIGNAL_EVERY_S = 1.0
SIGNAL_IDLE_S = 15.0
HEARTBEAT_EVERY_S = 1.0


class ProgressReporter:
    """Callable with each DownloadProgress; `run` heartbeats meanwhile so a stop is seen promptly."""

    def __init__(self) -> None:
        self.latest: DownloadProgress | None = None
        self._signalled: DownloadProgress | None = None
        self._signalled_at = 0.0
        self._signal: asyncio.Task | None = None

    def __call__(self, progress: DownloadProgress) -> None:
        self.latest = progress
        if activity.in_activity():
            activity.heartbeat(progress.model_dump(mode="json"))
            if self._worth_signalling(progress):
                self._send(progress)

    async def run(self, work):
        """Await `work`, heartbeating every second (listing a repo, hashing a partial file...)."""
        task = asyncio.ensure_future(work)
        started = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_S)
                if done:
                    return task.result()
                if activity.in_activity():
                    activity.heartbeat(self.latest.model_dump(mode="json") if self.latest else None)
        except asyncio.CancelledError:
            task.cancel()
            try:
                await task  # let the download close its partial file before the activity ends
            except (asyncio.CancelledError, Exception):
                pass
            raise
        finally:
            self._record_download(time.monotonic() - started)
            await self._flush()

    def _record_download(self, seconds: float) -> None:
        """A download that moved bytes (none reported: the files were in the cache): its bytes
        (those of an earlier, interrupted attempt not counted again) and its time."""
        if self.latest is None:
            return
        node = _node_id()
        metrics.record(DOWNLOAD_BYTES, max(0, self.latest.bytes_done - self.latest.resumed_from), node=node)
        metrics.record(DOWNLOAD_SECONDS, seconds, node=node)

    def _worth_signalling(self, progress: DownloadProgress) -> bool:
        if self._signal is not None and not self._signal.done():
            return False
        since = time.monotonic() - self._signalled_at
        if since < SIGNAL_EVERY_S:
            return False
        before = self._signalled
        if before is None or before.file != progress.file or since >= SIGNAL_IDLE_S:
            return True
        if progress.bytes_total:
            return int(100 * progress.bytes_done / progress.bytes_total) > int(
                100 * before.bytes_done / progress.bytes_total
            )
        return False

    def _send(self, progress: DownloadProgress) -> None:
        self._signalled, self._signalled_at = progress, time.monotonic()
        handle = activity.client().get_workflow_handle(activity.info().workflow_id)
        self._signal = asyncio.ensure_future(handle.signal(DOWNLOAD_PROGRESS_SIGNAL, progress))
        self._signal.add_done_callback(_ignore_failure)

    async def _flush(self) -> None:
        """The last progress signal lands before the activity's result (the workflow then drops it)."""
        if self._signal is not None and not self._signal.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._signal), timeout=2)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                pass


def _ignore_failure(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # progress is best effort: a lost signal only delays the figure


def _node_id() -> str:
    return Settings.from_env().node_id
