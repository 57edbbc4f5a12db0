"""await_ready: from launched to serving, or a named failure (berth.node.readiness). INITIALIZING
in the workflow."""

from temporalio import activity

from berth.domain.pipeline import AWAIT_READY, EngineOutcome, ReadyRequest
from berth.node.readiness import wait_until_ready


@activity.defn(name=AWAIT_READY)
async def await_ready(request: ReadyRequest) -> EngineOutcome:
    return await wait_until_ready(request, heartbeat=activity.heartbeat)
