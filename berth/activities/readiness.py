"""await_ready: from launched to serving, or a named failure. INITIALIZING in the workflow.

Polls the engine's own readiness probe every 50 ms and watches the process: an engine that dies
while loading is reported at once with its log lines; one not ready within the budget (counted
from its launch, so a worker restart does not extend it) is STARTUP_TIMEOUT. Ready means ready
where users call it: the same probe must then pass through the gateway's route too.
"""

import time

import httpx
from temporalio import activity

from berth.activities.engine_watch import EngineView, wait_for_exit
from berth.domain.errors import ErrorCode, Failure
from berth.domain.pipeline import AWAIT_READY, EngineOutcome, ReadyRequest
from berth.engines.base import Readiness
from berth.engines.registry import get_engine
from berth.settings import Settings

POLL_S = 0.05
HEARTBEAT_S = 1.0


@activity.defn(name=AWAIT_READY)
async def await_ready(request: ReadyRequest) -> EngineOutcome:
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
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0)) as client:
        while True:
            view = EngineView.of(handle)
            if view.stopped_by_shutdown:
                return EngineOutcome(node_shutdown=True)
            if not view.alive():
                return EngineOutcome(failure=view.exit_failure())
            last_seen = await engine.probe(client, probe_urls[0])
            if last_seen is Readiness.READY:
                if len(probe_urls) == 1:
                    return EngineOutcome(ready=True)
                probe_urls.pop(0)
                continue
            now = time.time()
            if now >= deadline:
                where = "its health check" if len(probe_urls) == 2 else "the gateway's route to it"
                return EngineOutcome(failure=_timeout(view, request.startup_timeout_s, where, last_seen))
            if now - last_heartbeat >= HEARTBEAT_S:
                activity.heartbeat(last_seen.value)
                last_heartbeat = now
            await wait_for_exit(view.record.pid, view.record.pid_create_time, min(POLL_S, deadline - now))


def _timeout(view: EngineView, budget_s: float, where: str, last_seen: Readiness) -> Failure:
    lines = view.log_lines(20)
    return Failure(
        code=ErrorCode.STARTUP_TIMEOUT,
        message=f"the engine was not ready within {budget_s:g} s ({where} still said "
        f"{last_seen.value.lower()})",
        log_lines=lines,
    )
