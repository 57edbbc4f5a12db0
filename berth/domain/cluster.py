"""The cluster: what berth knows of its nodes and of what each one holds, and the names under which
that view lives in Temporal (docs/cluster.md).

One entity workflow, `berth-cluster` (berth.workflows.cluster), owns the view: every node's facts
(sent by its worker when it joins), its status (READY, NOT_READY, DRAINING, DOWN: kept by a presence
activity on the node's own queue, whose heartbeat timeout is the failure detector) and the memory
reservations of the instances placed on it. Updates are serialised by the workflow, so a
reservation is exact: two instances never take the same bytes. Pure data here; the workflow, the
activities and the choice of a node (berth.domain.placement) use it.
"""

import re
from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field

# ---- Temporal names ------------------------------------------------------------------------------

CLUSTER_WORKFLOW_ID = "berth-cluster"
CLUSTER_WORKFLOW_TYPE = "BerthCluster"
# queries
NODES_QUERY = "nodes"  # -> ClusterView
# updates (each with a validator: a refusal changes nothing and the caller gets the reason)
JOIN_UPDATE = "join"  # NodeFacts -> NodeView: a node's worker (re)joins; a new incarnation restarts its presence
RESERVE_UPDATE = "reserve"  # ReserveRequest -> Placement: choose a node for an instance and reserve its memory
RELEASE_UPDATE = "release"  # ReleaseRequest -> None: the instance is gone (idempotent)
DRAIN_UPDATE = "drain"  # node id -> NodeView: no new instances there; its deployments move theirs away
UNDRAIN_UPDATE = "undrain"  # node id -> NodeView: READY again
# signals the cluster workflow sends to deployment workflows (berth.workflows.deployment)
NODE_LOST_SIGNAL = "node_lost"  # NodeEvent: the node is DOWN: replace the instances it held
NODE_DRAINING_SIGNAL = "node_draining"  # NodeEvent: move the instances away (surge first, then stop)
NODES_CHANGED_SIGNAL = "nodes_changed"  # RoutingNodes: the gateways a route must reach changed
# activities
NODE_PRESENCE = "node_presence"  # on berth-node-<id>: heartbeats until cancelled (the failure detector)
RESERVE_INSTANCE = "reserve_instance"  # local activity: the RESERVE_UPDATE, from a deployment workflow
RELEASE_INSTANCE = "release_instance"  # local activity: the RELEASE_UPDATE, from a deployment workflow



def presence_task_queue(node_id: str) -> str:
    """The queue of a node's presence activity: its worker polls it with a worker of its own, whose
    heartbeats are throttled to a quarter of the grace (the node queue's worker throttles to 0.8 x
    each activity's heartbeat timeout, which would leave a presence heartbeat 1.6 s of slack)."""
    return f"berth-presence-{node_id}"


# Seconds without a presence heartbeat before a node is DOWN (BERTH_NODE_GRACE_S): a worker that
# restarts within it moves nothing; after it, the node's instances are replaced elsewhere.
DEFAULT_NODE_GRACE_S = 8.0

PlacementStrategy = Literal["spread", "pack"]

# A node id names a task queue (berth-node-<id>), a folder and a metric label: a hostname's label.
NODE_ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")


def check_node_id(node_id: str) -> str:
    if not NODE_ID_PATTERN.match(node_id):
        raise ValueError(
            f"{node_id[:80]!r} is not a node id: lowercase letters, digits, '-' and '_', 1-63 characters"
        )
    return node_id


class NodeStatus(str, Enum):
    READY = "READY"  # its presence activity heartbeats: instances may be placed there
    NOT_READY = "NOT_READY"  # joined, presence not (yet, or no longer) confirmed: nothing new goes there
    DRAINING = "DRAINING"  # asked to empty (`berth drain`, or its `berth join` stopping)
    DOWN = "DOWN"  # no presence heartbeat for the grace: its instances were replaced elsewhere


class NodeGpu(BaseModel):
    name: str
    memory_bytes: int


class NodeFacts(BaseModel):
    """What a node's worker says of its node when it joins."""

    node_id: str
    # where peers reach this node's gateway: http://<BERTH_NODE_ADDRESS>:<gateway port>
    gateway_url: str
    incarnation: str  # one per worker start: a new one means the worker restarted
    os: str
    arch: str
    ram_bytes: int
    gpus: list[NodeGpu] = Field(default_factory=list)
    docker: bool = False
    mlx: bool = False
    engines: list[str] = Field(default_factory=list, description="engines that can run there")
    capacity_bytes: int = Field(description="memory berth's engines may use there (its budget, BERTH_MEMORY_LIMIT)")


class Reservation(BaseModel):
    instance_id: str
    deployment: str
    node: str
    bytes: int


class NodeView(BaseModel):
    facts: NodeFacts
    status: NodeStatus
    since: datetime
    reason: str | None = None  # why NOT_READY / DRAINING / DOWN
    reserved_bytes: int = 0
    instances: list[str] = Field(default_factory=list, description="instance ids with a reservation there")


class ClusterView(BaseModel):
    nodes: list[NodeView] = Field(default_factory=list)
    grace_s: float = DEFAULT_NODE_GRACE_S


class ReserveRequest(BaseModel):
    instance_id: str
    deployment: str
    model: str  # the spec's model reference (a NODE:/path names the node that holds the files)
    engine: str = "auto"  # the spec's engine (an override restricts the nodes)
    bytes: int = 0  # planned memory per instance (0: not known yet; the node's plan then confirms)
    pin: str | None = None  # spec.node: only this node, never another
    allowed: list[str] = Field(default_factory=list)  # spec.nodes: only these nodes (empty: any)
    strategy: PlacementStrategy = "spread"
    avoid: list[str] = Field(default_factory=list)  # nodes to skip (this instance failed to fit there)
    node: str | None = None  # re-reserve on this node with `bytes` (the plan is known): fit or refuse


class Placement(BaseModel):
    """The RESERVE_UPDATE's answer: a node (its reservation made) or, per node, why none fits."""

    node: str | None = None
    gateway_url: str | None = None
    refusals: dict[str, str] = Field(default_factory=dict)  # node id -> why it did not fit
    routing: dict[str, str] = Field(default_factory=dict)  # node id -> gateway URL of every routing node
    # no node fits now, but one that is DOWN or NOT_READY would: ask again when the nodes change
    # (a deployment waits for its node rather than failing: a single node's worker restart, a pin)
    retry: bool = False
    # free bytes (capacity - reservations) of every node this deployment may use, after this answer:
    # what the deployment's `scale` validator checks a count against
    free: dict[str, int] = Field(default_factory=dict)

    @property
    def message(self) -> str:
        if self.node:
            return f"placed on {self.node}"
        if not self.refusals:
            return "no node has joined the cluster"
        return "no node fits: " + "; ".join(f"{node}: {why}" for node, why in sorted(self.refusals.items()))


class ReleaseRequest(BaseModel):
    instance_id: str


class NodeEvent(BaseModel):
    node: str
    reason: str
    routing: dict[str, str] = Field(default_factory=dict)


class RoutingNodes(BaseModel):
    """The gateways every route must reach: node id -> gateway URL (READY, NOT_READY, DRAINING nodes)."""

    routing: dict[str, str] = Field(default_factory=dict)
