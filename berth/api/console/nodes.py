"""The console's Nodes page (/ui/nodes): every node of the cluster (id, address, status, RAM, GPUs,
engines, capacity, reserved, instances) with a Drain / Undrain button each; console.js refreshes the
table from /ui/api/nodes.

Where the nodes come from: the cluster workflow's `nodes` query (berth.api.facade.cluster_view,
shared with GET /metrics, at most one query a second), and drain / undrain are its updates. Both
sit behind the two functions `read_cluster` and `change_node` below, the one place to change when
the REST facade for nodes (GET /v1/nodes, POST /v1/nodes/{id}/drain|undrain: berth.api.facade.nodes)
is there to call instead.

The gate is the console's own (actions.py): the session cookie for every route, and for a POST
the same origin and the session's CSRF token. A node id is checked (berth.domain.cluster.
check_node_id) before anything reaches Temporal.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from berth.api.console.actions import require_own_page, require_session
from berth.api.console.node_rows import node_rows
from berth.api.console.pages import LOGIN, logged_in, redirect, render
from berth.api.console.views import TEMPLATES
from berth.api.facade import BadRequest, NotFound, Unavailable
from berth.api.facade.cluster_view import NO_CLUSTER, cluster_views
from berth.api.facade.errors import rpc_error
from berth.domain.cluster import (
    CLUSTER_WORKFLOW_ID,
    DRAIN_UPDATE,
    UNDRAIN_UPDATE,
    ClusterView,
    NodeView,
    check_node_id,
)

UPDATE_TIMEOUT = timedelta(seconds=10)  # an update needs the worker that runs the cluster workflow

page = APIRouter(prefix="/ui", include_in_schema=False)
reads = APIRouter(prefix="/ui/api", include_in_schema=False, dependencies=[Depends(require_session)])
changes = APIRouter(prefix="/ui/api", include_in_schema=False, dependencies=[Depends(require_own_page)])


# ---- the two calls to the cluster (swap for berth.api.facade.nodes once it exists) -------------


async def read_cluster(request: Request) -> tuple[ClusterView | None, str | None]:
    """The cluster's view, and when there is none, why."""
    views = cluster_views(request.app.state)
    view = await views.view(await request.app.state.deployments.client())
    return view, None if view is not None else (views.reason or NO_CLUSTER)


async def change_node(request: Request, node_id: str, undrain: bool) -> NodeView:
    """Drain (nothing new placed there; its deployments move their instances away) or undrain."""
    try:
        check_node_id(node_id)
    except ValueError as invalid:
        raise BadRequest(str(invalid)) from None
    client = await request.app.state.deployments.client()
    handle = client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
    update = UNDRAIN_UPDATE if undrain else DRAIN_UPDATE
    try:
        node = await handle.execute_update(update, node_id, result_type=NodeView, rpc_timeout=UPDATE_TIMEOUT)
    except WorkflowUpdateFailedError as failed:  # the validator's refusal: an unknown node, with the known ones
        cause = failed.cause
        raise BadRequest(getattr(cause, "message", None) or str(cause or failed)) from None
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            raise NotFound(NO_CLUSTER) from None
        if error.status is RPCStatusCode.DEADLINE_EXCEEDED:
            raise Unavailable(f"no worker took the {update} in time: is the cluster's worker running?") from None
        raise rpc_error(error) from None
    finally:
        cluster_views(request.app.state).forget()  # the next read shows the change
    return node


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
    return {"node": node.facts.node_id, "status": node.status.value}


@changes.post("/nodes/{node_id}/undrain")
async def undrain(request: Request, node_id: str) -> dict:
    node = await change_node(request, node_id, undrain=True)
    return {"node": node.facts.node_id, "status": node.status.value}
