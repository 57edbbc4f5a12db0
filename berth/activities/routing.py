"""configure_route and remove_route: a deployment's route through the gateway, in this node's route
table (berth.node.routes); the worker's publisher coalesces the writes of concurrent activities
(berth.node.route_publisher). Each returns once the route table's file says so."""

from temporalio import activity

from berth.common.api_token import load_api_token
from berth.domain.pipeline import CONFIGURE_ROUTE, REMOVE_ROUTE, RouteRequest
from berth.node.route_publisher import route_publisher
from berth.node.routes import route_config
from berth.settings import Settings


@activity.defn(name=CONFIGURE_ROUTE)
async def configure_route(request: RouteRequest) -> str:
    """Route /models/<name>/ to the engine's port; returns the public endpoint."""
    settings = Settings.from_env()
    await route_publisher(settings.routes_dir).put(request.deployment, route_config(request, load_api_token(settings)))
    return f"{settings.gateway_url}/models/{request.deployment}/v1"


@activity.defn(name=REMOVE_ROUTE)
async def remove_route(deployment: str) -> None:
    await route_publisher(Settings.from_env().routes_dir).remove(deployment)
