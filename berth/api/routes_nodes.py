"""/v1/nodes: the cluster's nodes (berth.api.facade.nodes over the cluster workflow), and drain /
undrain. Admin token, like every route of the API."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from berth.api.dependencies import require_token
from berth.api.errors import ERROR_RESPONSES, ErrorBody
from berth.api.facade.nodes import NodeInfo, NodeList, Nodes

router = APIRouter(
    prefix="/v1/nodes",
    tags=["nodes"],
    dependencies=[Depends(require_token)],
    responses={
        **{code: ERROR_RESPONSES[code] for code in (401, 403)},
        503: {"model": ErrorBody, "description": "no cluster workflow yet (no worker started it), or Temporal does not answer"},
    },
)

NOT_FOUND = {404: {"model": ErrorBody, "description": "no node of that id: the message lists the known ones"}}
REFUSED = {400: {"model": ErrorBody, "description": "a malformed node id, or the cluster refused (the reason)"}}
NodeId = Annotated[str, Path(description="the node's id (BERTH_NODE_ID of its worker)", max_length=63)]


def nodes(request: Request) -> Nodes:
    return request.app.state.nodes


@router.get("", response_model=NodeList, summary="The nodes of the cluster")
async def list_nodes(facade: Annotated[Nodes, Depends(nodes)]) -> NodeList:
    """Every node that joined (`berth up` is the first, `berth join` the others): its gateway's
    address, status (READY, NOT_READY, DRAINING, DOWN) since when and why, hardware, the memory
    berth may use there (capacity), what the instances placed there reserve, and their ids."""
    return await facade.list()


@router.get("/{node_id}", response_model=NodeInfo, responses={**NOT_FOUND, **REFUSED}, summary="One node")
async def get_node(node_id: NodeId, facade: Annotated[Nodes, Depends(nodes)]) -> NodeInfo:
    return await facade.get(node_id)


@router.post("/{node_id}/drain", response_model=NodeInfo, responses={**NOT_FOUND, **REFUSED},
             summary="Move every instance off the node; place nothing new there")
async def drain_node(node_id: NodeId, facade: Annotated[Nodes, Depends(nodes)]) -> NodeInfo:
    """The node becomes DRAINING: nothing new is placed there, and each deployment with an instance
    there starts one on another node, then retires the old one once the new one serves. Poll
    GET /v1/nodes/{node_id} until `instances` is empty. Draining a DRAINING node changes nothing."""
    return await facade.drain(node_id)


@router.post("/{node_id}/undrain", response_model=NodeInfo, responses={**NOT_FOUND, **REFUSED},
             summary="Make a drained node READY again")
async def undrain_node(node_id: NodeId, facade: Annotated[Nodes, Depends(nodes)]) -> NodeInfo:
    return await facade.undrain(node_id)
