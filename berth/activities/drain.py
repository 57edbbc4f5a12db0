"""drain_engine: before an instance that left the route is stopped, its requests in flight finish
(berth.node.drain), within the deployment's `drain_timeout_s`."""

from temporalio import activity

from berth.domain.pipeline import DRAIN_ENGINE, DrainOutcome, DrainRequest
from berth.node.drain import drain_engine as drain
from berth.settings import Settings


@activity.defn(name=DRAIN_ENGINE)
async def drain_engine(request: DrainRequest) -> DrainOutcome:
    return await drain(request, Settings.from_env(), heartbeat=activity.heartbeat)
