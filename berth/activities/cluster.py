"""The cluster's activities (docs/cluster.md):

- node_presence, on the node's presence queue: heartbeats every ~grace/4 until cancelled
  (berth.node.presence). Its heartbeat timeout is the cluster workflow's failure detector; a refused
  heartbeat tells the worker, which checks the view and fences itself before it joins again.
- reserve_instance / release_instance: local activities of the deployment workflow, run by the
  worker that runs its workflow task; they call the cluster workflow's updates through the worker's
  own client, with update ids from the workflow (a retried attempt is the same update: Temporal
  answers it once). A workflow cannot send an update to another workflow: hence activities. When
  the cluster workflow is not running, they start it (with this node's grace) and fail the attempt:
  the retry finds it.
"""

from temporalio import activity
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from berth.domain.cluster import (
    CLUSTER_WORKFLOW_ID,
    CLUSTER_WORKFLOW_TYPE,
    NODE_PRESENCE,
    RELEASE_INSTANCE,
    RELEASE_UPDATE,
    RESERVE_INSTANCE,
    RESERVE_UPDATE,
    Placement,
    ReleaseRequest,
    ReserveRequest,
)
from berth.node.presence import keep_alive
from berth.settings import CONTROL_TASK_QUEUE, Settings


@activity.defn(name=NODE_PRESENCE)
async def node_presence(node: str, incarnation: str, grace_s: float) -> None:
    await keep_alive(node, incarnation, grace_s)


@activity.defn(name=RESERVE_INSTANCE)
async def reserve_instance(request: ReserveRequest, call_id: str) -> Placement:
    """The cluster's answer: a node with the instance's reservation made, or every node's reason."""
    client = activity.client()
    try:
        return await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).execute_update(
            RESERVE_UPDATE, request, id=f"reserve-{call_id}", result_type=Placement
        )
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            await client.start_workflow(
                CLUSTER_WORKFLOW_TYPE, {"grace_s": Settings.from_env().node_grace_s}, id=CLUSTER_WORKFLOW_ID,
                task_queue=CONTROL_TASK_QUEUE, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
        raise


@activity.defn(name=RELEASE_INSTANCE)
async def release_instance(request: ReleaseRequest, call_id: str) -> None:
    try:
        await activity.client().get_workflow_handle(CLUSTER_WORKFLOW_ID).execute_update(
            RELEASE_UPDATE, request, id=f"release-{call_id}"
        )
    except RPCError as error:
        if error.status is not RPCStatusCode.NOT_FOUND:  # no cluster workflow: nothing is reserved
            raise
