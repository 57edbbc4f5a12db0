"""GET /metrics: berth's own gauges in Prometheus's text format, with the API token as a bearer
(prometheus.yml's job `berth-api` reads it from a file). What the API can count cheaply from
Temporal's visibility store (berth.api.facade.counts); the counters and histograms of events
(failures, restarts, time to DEPLOYED, crash detection, downloads, routes) are the worker's, at its
own endpoint (docs/observability.md says why). The nodes' capacity, reservations, status and
instances come from one `nodes` query of the cluster workflow (berth.api.facade.cluster_view), and
are left out while there is no cluster workflow to answer it."""

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from temporalio.service import RPCError

from berth.api.dependencies import deployments, require_token
from berth.api.errors import ERROR_RESPONSES, ApiError
from berth.api.facade import Deployments
from berth.api.facade.cluster_view import cluster_views
from berth.domain.cluster import ClusterView, NodeStatus
from berth.domain.metric_names import (
    COUNTS_AGE,
    COUNTS_SECONDS,
    DEPLOYMENTS,
    NODE_CAPACITY,
    NODE_INSTANCES,
    NODE_RESERVED,
    NODE_STATUS,
    MetricName,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

def _json_error(status: int) -> dict:
    """An error answer is berth's JSON error body, though the route's success is text."""
    return {
        "description": ERROR_RESPONSES[status]["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


router = APIRouter(
    tags=["metrics"], dependencies=[Depends(require_token)], responses={s: _json_error(s) for s in (401, 403)}
)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="berth's metrics for Prometheus (text format 0.0.4)",
    responses={200: {"content": {"text/plain": {}}}, 503: _json_error(503)},
)
async def metrics(request: Request, facade: Deployments = Depends(deployments)) -> PlainTextResponse:
    """`berth_deployments{status, engine}`: running deployments, counted in Temporal's visibility
    store, as of the previous scrape (a new round of counts starts in the background: a scrape
    never waits for them but the first; berth.api.facade.counts); `berth_metrics_counts_seconds`:
    how long that round took; `berth_metrics_counts_age_seconds`: how old it is. 503 while Temporal
    does not answer and no earlier round exists (the target shows down).

    Per node, from the cluster workflow's `nodes` query (one per scrape at most, shared for a
    second): `berth_node_capacity_bytes`, `berth_node_reserved_bytes`, `berth_node_instances`
    (instances placed there), `berth_node_status{status}` (1 for its status, 0 for the others).
    Absent while no cluster workflow answers."""
    try:
        client = await facade.client()
        counted, view = await asyncio.gather(
            facade.counts(), cluster_views(request.app.state).view(client)
        )
    except RPCError as error:
        raise ApiError(503, "unavailable", f"Temporal did not answer the counts: {error.message}") from None
    lines = _header(DEPLOYMENTS)
    lines += [
        f'{DEPLOYMENTS.name}{{status="{_escape(status)}",engine="{_escape(engine)}"}} {count}'
        for (status, engine), count in sorted(counted.counts.items())
    ]
    lines += _header(COUNTS_SECONDS) + [f"{COUNTS_SECONDS.name} {counted.took_s:.6f}"]
    lines += _header(COUNTS_AGE) + [f"{COUNTS_AGE.name} {counted.age_s:.6f}"]
    lines += node_lines(view)
    return PlainTextResponse("\n".join(lines) + "\n", media_type=CONTENT_TYPE)


def node_lines(view: ClusterView | None) -> list[str]:
    """The node metrics of a cluster view, in Prometheus's text format; none without a view."""
    if view is None:
        return []
    nodes = sorted(view.nodes, key=lambda node: node.facts.node_id)
    lines: list[str] = []
    for metric, value in (
        (NODE_CAPACITY, lambda node: node.facts.capacity_bytes),
        (NODE_RESERVED, lambda node: node.reserved_bytes),
        (NODE_INSTANCES, lambda node: len(node.instances)),
    ):
        lines += _header(metric) + [f'{metric.name}{{node="{_escape(n.facts.node_id)}"}} {value(n)}' for n in nodes]
    lines += _header(NODE_STATUS)
    for node in nodes:
        for status in NodeStatus:
            lines.append(
                f'{NODE_STATUS.name}{{node="{_escape(node.facts.node_id)}",status="{status.value}"}} '
                f"{int(node.status is status)}"
            )
    return lines


def _header(metric: MetricName) -> list[str]:
    return [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
