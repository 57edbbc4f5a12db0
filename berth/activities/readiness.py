"""await_ready: from launched to serving, or a named failure. INITIALIZING in the workflow.

Polls the engine's own readiness probe every 50 ms and watches the process: an engine that dies
while loading is reported at once with its log lines, and so is one whose own health check keeps
saying it is broken (an MLX server whose load failed, a vLLM API server whose engine died); one
not ready within the budget (counted from its launch, so a worker restart does not extend it) is
STARTUP_TIMEOUT. Ready means ready where users call it: the same probe must then pass through the
gateway's route too.
"""

import time

from temporalio import activity

from berth.activities.engine_records import EngineRecords
from berth.activities.engine_watch import EngineView
from berth.activities.probe_client import probe_client
from berth.api_token import load_api_token
from berth.domain.errors import ErrorCode, Failure
from berth.domain.pipeline import AWAIT_READY, EngineOutcome, ReadyRequest
from berth.engines.base import Readiness
from berth.engines.registry import get_engine
from berth.settings import Settings

POLL_S = 0.05
HEARTBEAT_S = 1.0
UNHEALTHY_PROBES = 3  # consecutive "broken" answers from the engine itself before it has failed


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
    unhealthy = 0
    token = load_api_token(settings)  # the gateway's route asks for it
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    records = EngineRecords(settings.run_dir)
    while True:
        view = EngineView.of(handle, records)
        if view.stopped_by_shutdown:
            return EngineOutcome(node_shutdown=True)
        if not view.alive():
            return EngineOutcome(failure=view.exit_failure())
        last_seen = await engine.probe(probe_client(headers), probe_urls[0])
        direct = len(probe_urls) == 2
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
            activity.heartbeat(last_seen.value)
            last_heartbeat = now
        await view.wait_for_exit(min(POLL_S, deadline - now))


def _timeout(view: EngineView, budget_s: float, where: str, last_seen: Readiness) -> Failure:
    lines = view.log_lines(20)
    return Failure(
        code=ErrorCode.STARTUP_TIMEOUT,
        message=f"the engine was not ready within {budget_s:g} s ({where} still said "
        f"{last_seen.value.lower()})",
        log_lines=lines,
    )
