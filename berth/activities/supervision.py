"""supervise: the long activity behind DEPLOYED. It returns as soon as the engine exits (pidfd, no
polling delay) or stays unhealthy, with the evidence; it heartbeats so that a dead worker is
noticed and the activity resumes on the next worker of this node, re-adopting the same engine.
"""

import time

import httpx
from temporalio import activity

from berth.activities.engine_watch import EngineView, wait_for_exit
from berth.domain.diagnostics import classify_log
from berth.domain.errors import ErrorCode, Failure
from berth.domain.pipeline import SUPERVISE, EngineHandle, EngineOutcome
from berth.engines.base import Readiness
from berth.engines.registry import get_engine

HEALTH_INTERVAL_S = 5.0
UNHEALTHY_PROBES = 3  # consecutive failed probes before the engine is declared unhealthy


@activity.defn(name=SUPERVISE)
async def supervise(handle: EngineHandle) -> EngineOutcome:
    engine = get_engine(handle.engine)
    base_url = f"http://127.0.0.1:{handle.port}"
    since = time.time()
    failed_probes: list[Readiness] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(HEALTH_INTERVAL_S, connect=2.0)) as client:
        while True:
            view = EngineView.of(handle)
            served_s = time.time() - since
            if view.stopped_by_shutdown:
                return EngineOutcome(node_shutdown=True, served_s=served_s)
            if not view.alive():
                return EngineOutcome(failure=view.exit_failure(), served_s=served_s)
            readiness = await engine.probe(client, base_url)
            if readiness is Readiness.READY:
                failed_probes.clear()
            else:
                failed_probes.append(readiness)
                if len(failed_probes) >= UNHEALTHY_PROBES:
                    return EngineOutcome(failure=_unhealthy(view, failed_probes), served_s=served_s)
            activity.heartbeat(served_s)
            await wait_for_exit(view.record.pid, view.record.pid_create_time, HEALTH_INTERVAL_S)


def _unhealthy(view: EngineView, probes: list[Readiness]) -> Failure:
    lines = view.log_lines(50)
    diagnosis = classify_log(lines, get_engine(view.handle.engine).log_patterns)
    seen = ", ".join(probe.value.lower() for probe in probes)
    message = f"the engine is running but stopped answering its health check ({seen})"
    if diagnosis is not None:
        return Failure(
            code=diagnosis.code,
            message=f"{message}: {diagnosis.primary.text.strip()}",
            log_lines=[match.text for match in diagnosis.matched],
        )
    return Failure(code=ErrorCode.RUNTIME_ERROR, message=message, log_lines=lines[-20:])
