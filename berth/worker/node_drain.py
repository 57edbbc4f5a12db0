"""What `berth join` asks of the cluster workflow (berth.domain.cluster): whether another machine
already runs under this node's id, and, when it stops, the drain of this node.

Drain: the `drain` update on `berth-cluster` makes the node DRAINING (nothing new is placed there)
and tells the deployments that hold an instance there to move it (a new instance elsewhere first,
then the old one stops); `berth join` then polls the `nodes` query until this node holds no
reservation, or BERTH_DRAIN_TIMEOUT_S passes, and says what it left. No cluster workflow (a berth
whose workers do not run one): the drain is skipped, with a message.
"""

import asyncio
import os
from collections.abc import Callable
from datetime import timedelta

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from berth.domain.cluster import (
    CLUSTER_WORKFLOW_ID,
    DRAIN_UPDATE,
    NODES_QUERY,
    ClusterView,
    NodeStatus,
    NodeView,
)

DRAIN_TIMEOUT_ENV = "BERTH_DRAIN_TIMEOUT_S"
DEFAULT_DRAIN_TIMEOUT_S = 120.0
RPC_TIMEOUT = timedelta(seconds=10)
POLL_S = 0.5


def drain_timeout_s(env=os.environ) -> float:
    raw = (env.get(DRAIN_TIMEOUT_ENV) or "").strip()
    if not raw:
        return DEFAULT_DRAIN_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"berth: {DRAIN_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise SystemExit(f"berth: {DRAIN_TIMEOUT_ENV}={raw!r} must lie within 0-86400 seconds (0: do not wait)")
    return value


def _absent(error: RPCError) -> bool:
    """The cluster workflow is not there (never started, or closed)."""
    return error.status is RPCStatusCode.NOT_FOUND or "already completed" in str(error).lower()


def update_failure(error: WorkflowUpdateFailedError) -> str:
    cause = error.cause
    return str(getattr(cause, "message", None) or cause or error)


async def cluster_view(client: Client) -> ClusterView | None:
    """The `nodes` query; None when there is no cluster workflow."""
    handle = client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
    try:
        return await handle.query(NODES_QUERY, result_type=ClusterView, rpc_timeout=RPC_TIMEOUT)
    except RPCError as error:
        if _absent(error):
            return None
        raise


def node_in(view: ClusterView | None, node_id: str) -> NodeView | None:
    for node in (view.nodes if view else []):
        if node.facts.node_id == node_id:
            return node
    return None


async def id_taken_by_another(client: Client, node_id: str, gateway_url: str) -> str | None:
    """Why this node must not start under `node_id`: another machine (another gateway URL) holds
    it and is not DOWN. None when the id is free, is ours, or the cluster cannot tell now."""
    try:
        node = node_in(await cluster_view(client), node_id)
    except (RPCError, asyncio.TimeoutError):
        return None
    if node is None or node.status is NodeStatus.DOWN or node.facts.gateway_url == gateway_url:
        return None
    return (
        f"node id {node_id!r} is already in the cluster, {node.status.value}, with its gateway at "
        f"{node.facts.gateway_url}: two machines under one id would take each other's work. Give this "
        "one another BERTH_NODE_ID (or stop the other first and wait until it is DOWN)"
    )


async def drain_node(
    client: Client, node_id: str, timeout_s: float, say: Callable[[str], None], hurry: asyncio.Event
) -> bool:
    """Ask for the drain, then wait until the node holds no reservation. True when it emptied (or
    had nothing); False when the drain was skipped, refused, timed out or cut short by `hurry`."""
    handle = client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
    try:
        await handle.execute_update(DRAIN_UPDATE, node_id, result_type=NodeView, rpc_timeout=RPC_TIMEOUT)
    except WorkflowUpdateFailedError as error:
        say(f"berth: the cluster refused to drain {node_id}: {update_failure(error)}; stopping without a drain")
        return False
    except RPCError as error:
        if _absent(error):
            say(
                f"berth: no cluster workflow ({CLUSTER_WORKFLOW_ID}) on this Temporal: nothing to drain "
                "(its workers start it); stopping"
            )
        else:
            say(f"berth: could not ask the cluster to drain {node_id} ({error.status.name if error.status else ''} "
                f"{error}); stopping without a drain")
        return False
    say(f"berth: draining {node_id}: its instances move to other nodes (up to {timeout_s:.0f} s, "
        f"{DRAIN_TIMEOUT_ENV}; Ctrl-C again stops at once)")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    left: list[str] = []
    while True:
        try:
            node = node_in(await cluster_view(client), node_id)
        except (RPCError, asyncio.TimeoutError) as error:
            say(f"berth: the cluster did not answer ({error}); asking again")
        else:
            left = list(node.instances) if node else []
            if not left:
                say(f"berth: {node_id} is drained: no instance left here")
                return True
        if hurry.is_set():
            say(f"berth: stopping before the drain ended; left here: {', '.join(left) or 'unknown'}")
            return False
        if loop.time() >= deadline:
            say(
                f"berth: the drain did not end within {timeout_s:.0f} s ({DRAIN_TIMEOUT_ENV}); stopping with "
                f"{len(left)} instance(s) still here: {', '.join(left) or 'unknown'} (their deployments "
                "replace them once this node is DOWN)"
            )
            return False
        try:
            await asyncio.wait_for(hurry.wait(), POLL_S)
        except asyncio.TimeoutError:
            pass
