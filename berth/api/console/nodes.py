"""The console's Nodes page (/ui/nodes): every node of the cluster (id, address, status, RAM, GPUs,
engines, capacity, reserved, instances) with a Drain / Undrain button each; console.js refreshes the
table from /ui/api/nodes.

Where the nodes come from: the cluster workflow's `nodes` query through the cached reader that
GET /metrics uses (berth.api.facade.cluster_view: the console's tabs poll every second, and they
and the scrapes share at most one query a second, where GET /v1/nodes asks afresh each time); drain
and undrain are the REST API's own (berth.api.facade.nodes, app.state.nodes: POST
/v1/nodes/{id}/drain|undrain), with its answers: a malformed id 400, an unknown node 404 naming the
known ones, no cluster workflow 503.

The gate is the console's own (actions.py): the session cookie for every route, and for a POST
the same origin and the session's CSRF token. A node id is checked (berth.domain.cluster.
check_node_id) before anything reaches Temporal.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from berth.api.console.actions import require_own_page, require_session
from berth.api.console.node_rows import node_rows
from berth.api.console.pages import LOGIN, logged_in, redirect, render
from berth.api.console.views import TEMPLATES
from berth.api.facade import Unavailable
from berth.api.facade.cluster_view import NO_CLUSTER, cluster_views
from berth.api.facade.nodes import NodeInfo, Nodes
from berth.domain.cluster import ClusterView

page = APIRouter(prefix="/ui", include_in_schema=False)
reads = APIRouter(prefix="/ui/api", include_in_schema=False, dependencies=[Depends(require_session)])
changes = APIRouter(prefix="/ui/api", include_in_schema=False, dependencies=[Depends(require_own_page)])


# ---- the cluster: read through the shared cache, changed through the REST API's facade -----------


async def read_cluster(request: Request) -> tuple[ClusterView | None, str | None]:
    """The cluster's view, and when there is none, why."""
    views = cluster_views(request.app.state)
    view = await views.view(await request.app.state.deployments.client())
    return view, None if view is not None else (views.reason or NO_CLUSTER)


async def change_node(request: Request, node_id: str, undrain: bool) -> NodeInfo:
    """Drain (nothing new placed there; its deployments move their instances away) or undrain."""
    nodes: Nodes = request.app.state.nodes
    try:
        return await (nodes.undrain(node_id) if undrain else nodes.drain(node_id))
    finally:
        cluster_views(request.app.state).forget()  # the next read shows the change


# ---- the page and its live table -------------------------------------------------------------------


def _table_html(view: ClusterView | None) -> str:
    return TEMPLATES.get_template("_nodes.html").render(rows=node_rows(view))


@page.get("/nodes")
async def nodes_page(request: Request) -> Response:
    if not logged_in(request):
        return redirect(LOGIN)
    try:
        view, why = await read_cluster(request)
    except Unavailable as failed:
        view, why = None, failed.message
    return render(request, "nodes.html", rows=node_rows(view), why=why)


@reads.get("/nodes")
async def nodes_table(request: Request) -> dict:
    view, why = await read_cluster(request)
    return {"html": _table_html(view), "count": len(view.nodes) if view else 0, "why": why}


@changes.post("/nodes/{node_id}/drain")
async def drain(request: Request, node_id: str) -> dict:
    node = await change_node(request, node_id, undrain=False)
    return {"node": node.id, "status": node.status.value}


@changes.post("/nodes/{node_id}/undrain")
async def undrain(request: Request, node_id: str) -> dict:
    node = await change_node(request, node_id, undrain=True)
    return {"node": node.id, "status": node.status.value}
