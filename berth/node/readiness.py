"""From launched to serving, or a named failure: what await_ready waits for (INITIALIZING in the
workflow).

Probes the engine's own readiness when the engine writes to its log (an engine logs the moment it
serves, and little while it loads; inotify says when, at most one probe per 10 ms), else every 200
ms (every 50 ms in a container, whose log is Docker's), and watches the process: an engine that
dies while loading is reported at once with its log lines, and so is one whose own health check
keeps saying it is broken (an MLX server whose load failed, a vLLM API server whose engine died);
one not ready within the budget (counted from its launch, so a worker restart does not extend it)
is STARTUP_TIMEOUT. Ready means ready where users call it: the same probe must then pass through
the gateway's route too (on a node without the API token, the route's answer from the API's check:
route_answers).
"""

import asyncio
import os
import time

import httpx
from collections.abc import Callable
from pathlib import Path

from berth.common.api_token import load_api_token
from berth.domain.errors import ErrorCode, Failure
from berth.domain.pipeline import EngineOutcome, ReadyRequest
from berth.engines.base import Readiness
from berth.engines.registry import get_engine
from berth.node.engine_records import EngineRecords
from berth.node.engine_watch import EngineView, HeldExitWatch
from berth.node.file_changes import FileChanges
from berth.node.probe_client import probe_client
from berth.settings import Settings

POLL_S = 0.05  # between probes where the log cannot tell when to look (a container; no pidfd, as on macOS)
QUIET_POLL_S = 0.2  # between probes while a watched log stays quiet
LOG_CHECK_S = 0.01  # probes at most this often on log writes; without inotify, how often the log's size is looked at
# between probes through the gateway once the engine itself is ready: what is awaited then is
# Traefik loading the route's file (it answers 404 for the path until then)
GATEWAY_POLL_S = 0.01
HEARTBEAT_S = 1.0
UNHEALTHY_PROBES = 3  # consecutive "broken" answers from the engine itself before it has failed


async def wait_until_ready(request: ReadyRequest, heartbeat: Callable[[str], None]) -> EngineOutcome:
    """Probe until the engine serves, directly and through its route; `heartbeat` is called with
    the last probe's answer every HEARTBEAT_S while it waits."""
    handle = request.handle
    engine = get_engine(handle.engine)
    settings = Settings.from_env()
    probe_urls = [
        f"http://127.0.0.1:{handle.port}",  # the engine itself
        f"{settings.gateway_url}/models/{handle.deployment}",  # and through its route
    ]
    deadline = handle.started_at + request.startup_timeout_s
    last_seen = Readiness.STARTING
    last_heartbeat = 0.0
    unhealthy = 0
    token = load_api_token(settings)  # the gateway's route asks for it
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    records = EngineRecords(settings.run_dir)
    watch = HeldExitWatch.open(EngineView.of(handle, records).record)  # None: ask the view each time
    log = LogGrowth(Path(handle.log_path))
    changes = FileChanges.open(handle.log_path) if watch else None  # None: look at the log's size
    try:
        while True:
            view = EngineView.of(handle, records)  # read again: a shutdown shows there
            if view.stopped_by_shutdown:
                return EngineOutcome(node_shutdown=True)
            if not view.alive(watch):
                return EngineOutcome(failure=view.exit_failure())
            direct = len(probe_urls) == 2
            if direct or token:
                last_seen = await engine.probe(probe_client(headers), probe_urls[0])
            else:
                last_seen = await route_answers(probe_client(headers), probe_urls[0] + engine.health_path)
            unhealthy = unhealthy + 1 if direct and last_seen is Readiness.UNHEALTHY else 0
            if unhealthy >= UNHEALTHY_PROBES:
                return EngineOutcome(
                    failure=view.unhealthy_failure("the engine is running but its health check says it is broken")
                )
            now = time.time()
            if last_seen is Readiness.READY and now < deadline:
                if len(probe_urls) == 1:
                    return EngineOutcome(ready=True)
                probe_urls.pop(0)
                continue
            if now >= deadline:  # ready only counts when seen within the budget
                where = "its health check" if len(probe_urls) == 2 else "the gateway's route to it"
                return EngineOutcome(failure=_timeout(view, request.startup_timeout_s, where, last_seen))
            if now - last_heartbeat >= HEARTBEAT_S:
                heartbeat(last_seen.value)
                last_heartbeat = now
            if direct:
                await until_next_probe(view, watch, log, deadline - now, changes)
            else:  # the engine serves: only Traefik's reload of the route can lag
                await view.wait_for_exit(min(GATEWAY_POLL_S, deadline - now), watch)
    finally:
        if changes:
            changes.close()
        if watch:
            watch.close()


async def route_answers(client, url: str) -> Readiness:
    """The gateway step on a node without the API token (a node that joined a cluster): its route
    checks every call with the API (forwardAuth), and the node has no credential to pass it with. The
    API's 401 (or 403) says the route is loaded and checked; the engine was seen ready a moment
    before. A public route must answer 200."""
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return Readiness.STARTING
    return Readiness.READY if response.status_code in (200, 401, 403) else Readiness.STARTING


class LogGrowth:
    """Whether the engine has written to its log since the last look: one stat, nothing read."""

    def __init__(self, path: Path):
        self.path = path
        self.size = self._size()

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return -1

    def grew(self) -> bool:
        size = self._size()
        grew, self.size = size != self.size, size
        return grew


async def until_next_probe(
    view: EngineView, watch: HeldExitWatch | None, log: LogGrowth, budget_s: float, changes: FileChanges | None = None
) -> None:
    """Wait until the next probe is due (never past the budget): as soon as the engine exits or
    writes to its log, else after QUIET_POLL_S. llama.cpp's server (and berth's launcher for it) says
    nothing while the weights load and logs the moment it serves: the probe that sees it follows at
    once (a 50 ms poll was 25 ms late on average and probed ~40 times in a 2 s load). With `changes`
    (inotify on the log) the worker does nothing meanwhile, and probes at most every LOG_CHECK_S on
    a chatty log; without, it looks at the log's size every LOG_CHECK_S. Without a held watch (a
    container, whose log is Docker's; no pidfd, as on macOS): every POLL_S."""
    if watch is None:
        await view.wait_for_exit(min(POLL_S, budget_s))
        return
    started = time.monotonic()
    until = started + min(QUIET_POLL_S, budget_s)
    if changes is not None:
        if await changes.wait(until - started, also=watch.exit):
            log.grew()  # taken: the size is known as of this wake
            await asyncio.sleep(max(0.0, min(started + LOG_CHECK_S, until) - time.monotonic()))
        return
    while (remaining := until - time.monotonic()) > 0:
        await asyncio.sleep(min(LOG_CHECK_S, remaining))
        if watch.exited() or log.grew():
            return


def _timeout(view: EngineView, budget_s: float, where: str, last_seen: Readiness) -> Failure:
    lines = view.log_lines(20)
    return Failure(
        code=ErrorCode.STARTUP_TIMEOUT,
        message=f"the engine was not ready within {budget_s:g} s ({where} still said "
        f"{last_seen.value.lower()})",
        log_lines=lines,
    )
