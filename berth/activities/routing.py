"""configure_route and remove_route: a deployment's route through the gateway, in this node's route
table (berth.node.routes); the worker's publisher coalesces the writes of concurrent activities
(berth.node.route_publisher). Each returns once the route table's file says so.

The same RouteRequest goes to every node (docs/cluster.md): each node renders it for itself (its
own instances on loopback, the others through their nodes' gateways: berth.node.peer_routes)."""

from temporalio import activity

from berth.domain.pipeline import CONFIGURE_ROUTE, REMOVE_ROUTE, RouteRequest
from berth.node.route_publisher import route_publisher
from berth.node.routes import publish_route
from berth.settings import Settings


@activity.defn(name=CONFIGURE_ROUTE)
async def configure_route(request: RouteRequest) -> str:
    """Route /models/<name>/ to the instances; returns the public endpoint."""
    return await publish_route(Settings.from_env(), request)


@activity.defn(name=REMOVE_ROUTE)
async def remove_route(deployment: str) -> None:
    await route_publisher(Settings.from_env().routes_dir).remove(deployment)
