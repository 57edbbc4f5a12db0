"""supervise: the long activity behind DEPLOYED (berth.node.supervision). It returns when the engine
exits or stays unhealthy; its heartbeats let a dead worker be noticed, and the next worker of this
node resumes it, re-adopting the same engine."""

from temporalio import activity

from berth.domain.pipeline import SUPERVISE, EngineHandle, EngineOutcome
from berth.node.supervision import watch_engine


@activity.defn(name=SUPERVISE)
async def supervise(handle: EngineHandle) -> EngineOutcome:
    return await watch_engine(handle, heartbeat=activity.heartbeat)
