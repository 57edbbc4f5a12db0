"""place_deployment: which node runs a deployment. One machine today: the node of the worker that asks."""

from temporalio import activity

from berth.domain.pipeline import PLACE_DEPLOYMENT
from berth.settings import Settings


@activity.defn(name=PLACE_DEPLOYMENT)
async def place_deployment(requested_node: str | None) -> str:
    return requested_node or Settings.from_env().node_id
