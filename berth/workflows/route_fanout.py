"""A deployment's route on every gateway of the cluster (docs/cluster.md): the same RouteRequest
(the servers on every node, the gateways' URLs) goes to each routing node's configure_route; each
node's request also lists its own servers' ports (`ports`, as before the cluster). A node that does
not take the activity within a few seconds (activity_options.ROUTE_TAKEN_WITHIN) is skipped: it
gets the route again at the next change (`nodes_changed` when it joins again). A failure on a node
that holds servers of the deployment is the deployment's (e.g. NODE_MISCONFIGURED); elsewhere it is
logged and that node skipped.
"""

from temporalio import workflow
from temporalio.exceptions import ActivityError, TimeoutError, TimeoutType, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from berth.domain.pipeline import CONFIGURE_ROUTE, REMOVE_ROUTE, RouteRequest, RouteServer
    from berth.domain.spec import DeploymentSpec
    from berth.domain.ui_details import step_summary
    from berth.settings import node_task_queue

from berth.workflows import activity_options as options
from berth.workflows.node_steps import together


def _not_taken(error: ActivityError) -> bool:
    cause = error.cause
    return isinstance(cause, TimeoutError) and cause.type is TimeoutType.SCHEDULE_TO_START


async def publish(
    spec: DeploymentSpec, engine: str, servers: list[RouteServer], routing: dict[str, str]
) -> tuple[str | None, list[str]]:
    """configure_route on every routing node and every node with a server; returns the endpoint
    (the answer of the first server's node, else of any node) and the nodes that took the route."""
    holders = {server.node for server in servers}
    nodes = sorted(set(routing) | holders)

    async def one(node: str) -> str | None:
        request = RouteRequest(
            deployment=spec.name, ports=[s.port for s in servers if s.node == node], engine=engine,
            public=spec.public, instances=servers, nodes=routing,
        )
        here = len(request.ports)
        what = f"route /models/{spec.name}/ to {len(servers)} server(s), {here} on this node"
        try:
            return await workflow.execute_activity(
                CONFIGURE_ROUTE, request, task_queue=node_task_queue(node), result_type=str,
                summary=step_summary(what, node, None), **options.ROUTE,
            )
        except ActivityError as error:
            if is_cancelled_exception(error) or (node in holders and not _not_taken(error)):
                raise
            workflow.logger.warning("route of %s not taken by node %s: %s", spec.name, node, error.cause or error)
            return None

    answers = dict(zip(nodes, await together(*(one(node) for node in nodes))))
    took = [node for node, answer in answers.items() if answer is not None]
    first = servers[0].node if servers else None
    endpoint = answers.get(first) if first else None
    return endpoint or next((answers[node] for node in took), None), took


async def unpublish(deployment: str, nodes: list[str]) -> None:
    """remove_route on each of these nodes (a node that does not take it is skipped: its reconcile
    removes the route of a deployment that no longer runs)."""

    async def one(node: str) -> None:
        try:
            await workflow.execute_activity(
                REMOVE_ROUTE, deployment, task_queue=node_task_queue(node),
                summary=step_summary("remove the route", node, None), **options.ROUTE_TEARDOWN,
            )
        except ActivityError as error:
            if is_cancelled_exception(error) or not _not_taken(error):
                raise
            workflow.logger.warning("route of %s: removal not taken by node %s", deployment, node)

    await together(*(one(node) for node in sorted(set(nodes))))
