"""The cluster's nodes as the REST API shows them: the `nodes` query and the `drain` / `undrain`
updates of the cluster workflow `berth-cluster` (berth.domain.cluster), through the same Temporal
client as the deployments (berth.api.facade.lifecycle.Deployments.client).

An unknown node is a NotFound naming the known ones; the workflow validator's refusal a BadRequest
with its reason; no cluster workflow (no worker has started it yet) an Unavailable saying so.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from berth.api.facade.errors import BadRequest, NotFound, Unavailable, rpc_error
from berth.api.facade.lifecycle import Deployments
from berth.domain.cluster import (
    CLUSTER_WORKFLOW_ID,
    DRAIN_UPDATE,
    NODES_QUERY,
    UNDRAIN_UPDATE,
    ClusterView,
    NodeGpu,
    NodeStatus,
    NodeView,
    check_node_id,
)

QUERY_TIMEOUT = timedelta(seconds=10)
UPDATE_TIMEOUT = timedelta(seconds=10)
NO_CLUSTER = (
    f"the cluster workflow {CLUSTER_WORKFLOW_ID!r} is not running: no berth worker has started it yet "
    "(every worker starts it when it starts: is `berth up` or `berth join` running?)"
)


class NodeInfo(BaseModel):
    """One node: what its worker said when it joined, its status, and what is placed there."""

    id: str
    address: str = Field(description="its gateway's URL, where the other nodes reach it")
    status: NodeStatus
    since: datetime = Field(description="when it took this status")
    reason: str | None = Field(None, description="why NOT_READY, DRAINING or DOWN")
    os: str
    arch: str
    ram_bytes: int
    gpus: list[NodeGpu] = Field(default_factory=list)
    docker: bool = False
    mlx: bool = False
    engines: list[str] = Field(default_factory=list, description="engines that can run there")
    capacity_bytes: int = Field(description="memory berth's engines may use there (BERTH_MEMORY_LIMIT)")
    reserved_bytes: int = Field(description="memory reserved by the instances placed there")
    free_bytes: int = Field(description="capacity - reserved (never below 0)")
    instances: list[str] = Field(default_factory=list, description="ids of the instances placed there")


class NodeList(BaseModel):
    nodes: list[NodeInfo]
    grace_s: float = Field(description="seconds without a presence heartbeat before a node is DOWN (BERTH_NODE_GRACE_S)")


def node_info(view: NodeView) -> NodeInfo:
    facts = view.facts
    return NodeInfo(
        id=facts.node_id,
        address=facts.gateway_url,
        status=view.status,
        since=view.since,
        reason=view.reason,
        os=facts.os,
        arch=facts.arch,
        ram_bytes=facts.ram_bytes,
        gpus=facts.gpus,
        docker=facts.docker,
        mlx=facts.mlx,
        engines=facts.engines,
        capacity_bytes=facts.capacity_bytes,
        reserved_bytes=view.reserved_bytes,
        free_bytes=max(0, facts.capacity_bytes - view.reserved_bytes),
        instances=view.instances,
    )


def node_list(view: ClusterView) -> NodeList:
    return NodeList(
        nodes=[node_info(node) for node in sorted(view.nodes, key=lambda n: n.facts.node_id)], grace_s=view.grace_s
    )


def _cluster_error(error: RPCError) -> Exception:
    if error.status is RPCStatusCode.NOT_FOUND or "already completed" in str(error).lower():
        return Unavailable(NO_CLUSTER)
    if error.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
        return Unavailable("no berth worker answered the cluster workflow in time: are the workers running?")
    return rpc_error(error)


def checked_id(node_id: str) -> str:
    try:
        return check_node_id(node_id)
    except ValueError as error:
        raise BadRequest(f"node: {error}") from None


class Nodes:
    """List, inspect, drain and undrain the cluster's nodes."""

    def __init__(self, deployments: Deployments):
        self._deployments = deployments

    async def view(self) -> ClusterView:
        """The cluster workflow's view (also what /metrics and the console read)."""
        client = await self._deployments.client()
        handle = client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
        try:
            return await handle.query(NODES_QUERY, result_type=ClusterView, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as error:
            raise _cluster_error(error) from None

    async def list(self) -> NodeList:
        return node_list(await self.view())

    async def get(self, node_id: str) -> NodeInfo:
        return node_info(self._find(await self.view(), checked_id(node_id)))

    async def drain(self, node_id: str) -> NodeInfo:
        return await self._update(DRAIN_UPDATE, node_id)

    async def undrain(self, node_id: str) -> NodeInfo:
        return await self._update(UNDRAIN_UPDATE, node_id)

    @staticmethod
    def _find(view: ClusterView, node_id: str) -> NodeView:
        for node in view.nodes:
            if node.facts.node_id == node_id:
                return node
        known = ", ".join(sorted(node.facts.node_id for node in view.nodes)) or "none has joined yet"
        raise NotFound(f"no node {node_id!r} in the cluster; the nodes: {known}")

    async def _update(self, update: str, node_id: str) -> NodeInfo:
        self._find(await self.view(), checked_id(node_id))  # 404 with the known ones, before any update
        client = await self._deployments.client()
        handle = client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
        try:
            view = await handle.execute_update(update, node_id, result_type=NodeView, rpc_timeout=UPDATE_TIMEOUT)
        except WorkflowUpdateFailedError as failed:
            cause = failed.cause
            raise BadRequest(str(getattr(cause, "message", None) or cause or failed)) from None
        except RPCError as error:
            raise _cluster_error(error) from None
        return node_info(view)
