"""Which node an instance goes to: a pure function of the request and the cluster's view (nodes and
reservations), applied by the cluster workflow (berth.workflows.cluster) one request at a time, so
that reservations are exact (docs/cluster.md, docs/replicas.md).

Filters, each with the reason a node fails it (every node gets one when none fits):

    status      READY only (NOT_READY, DRAINING and DOWN nodes take nothing new)
    pin         spec.node: only that node, never another
    allowed     spec.nodes: only those (empty: any)
    avoid       nodes this instance was refused by already (their own plan said no)
    engine      the engine can run there: an override must be one of the node's engines; `auto`
                by the model's format: .gguf -> llamacpp, .safetensors -> vllm or mlx (unknown: any)
    memory      free = capacity - reservations (never current usage) >= the instance's bytes

Scoring among the nodes left: spread (default) takes the node with the fewest instances of this
deployment, pack the one with the most; then the node that holds the files (the NODE of a
`NODE:/path` model); then spread the most free memory, pack the least; then the node id.

Confirming (`node` set in the request): the instance's plan on that node is known; the reservation
there takes the planned bytes when they fit beside the others' (its own old bytes are not counted),
else it is refused and the old reservation stays.
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from berth.domain.cluster import NodeStatus, NodeView, Reservation, ReserveRequest
from berth.domain.hardware import gib
from berth.domain.model_format import format_of_name

# A node-qualified path: `NODE:/path` (a URL's `scheme://` never matches: the path has one slash).
NODE_PATH = re.compile(r"^([a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?):(/(?!/).*)$")
# engines that serve each format (auto picks one of those the node has)
FORMAT_ENGINES = {"gguf": ("llamacpp",), "safetensors": ("vllm", "mlx")}


def files_node(model: str) -> str | None:
    """The node that holds the files of a `NODE:/path` model (None for any other reference)."""
    match = NODE_PATH.match(model)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Choice:
    """A node, or why no node fits: a reason per node. `retry`: some node could take the instance
    once it is READY again (it is DOWN or NOT_READY now), or no node has joined yet: ask again when
    the nodes change, rather than failing."""

    node: str | None = None
    refusals: dict[str, str] = field(default_factory=dict)
    retry: bool = False


def reserved_on(node: str, reservations: Iterable[Reservation], besides: str | None = None) -> int:
    return sum(r.bytes for r in reservations if r.node == node and r.instance_id != besides)


def engine_refusal(request: ReserveRequest, engines: Sequence[str]) -> str | None:
    """Why the instance's engine cannot run on a node with these engines (None: it can)."""
    have = ", ".join(sorted(engines)) or "none"
    if request.engine != "auto":
        if request.engine not in engines:
            return f"engine {request.engine} cannot run there (it runs: {have})"
        return None
    model = NODE_PATH.sub(r"\2", request.model)
    model_format = format_of_name(model)
    wanted = FORMAT_ENGINES.get(model_format or "")
    if wanted is None:
        return None  # the format is only known once the files are there: the node's own choice decides
    if not any(engine in engines for engine in wanted):
        return f"no engine for {model_format} models there (it runs: {have}; {model_format} needs {' or '.join(wanted)})"
    return None


def _filter(request: ReserveRequest, view: NodeView, reservations: Sequence[Reservation], memory: bool = True) -> str | None:
    node = view.facts.node_id
    if request.pin and node != request.pin:
        return f"the deployment is pinned to node {request.pin}"
    if request.allowed and node not in request.allowed:
        return f"not among the deployment's nodes ({', '.join(request.allowed)})"
    if view.status is not NodeStatus.READY:
        return f"{view.status.value}" + (f": {view.reason}" if view.reason else "")
    if node in request.avoid:
        return "this instance was refused there already"
    refused = engine_refusal(request, view.facts.engines)
    if refused:
        return refused
    if memory:
        free = view.facts.capacity_bytes - reserved_on(node, reservations, besides=request.instance_id)
        if free < request.bytes:
            return (
                f"needs {gib(request.bytes)}, {gib(max(0, free))} free of its {gib(view.facts.capacity_bytes)} "
                f"({gib(view.facts.capacity_bytes - free)} reserved)"
            )
    return None


def choose(request: ReserveRequest, nodes: Sequence[NodeView], reservations: Sequence[Reservation]) -> Choice:
    """The node for this instance (its reservation is the caller's to record), or every node's reason."""
    if request.node is not None:
        return _confirm(request, nodes, reservations)
    refusals: dict[str, str] = {}
    fitting: list[NodeView] = []
    retry = False
    for view in nodes:
        why = _filter(request, view, reservations)
        if why is None:
            fitting.append(view)
            continue
        refusals[view.facts.node_id] = why
        if view.status in (NodeStatus.DOWN, NodeStatus.NOT_READY) and _filter(
            request, view.model_copy(update={"status": NodeStatus.READY}), reservations
        ) is None:
            retry = True  # it would fit once it is back
    if not fitting:  # no node at all yet (a deploy right after `berth up`, before its worker joined): wait
        return Choice(refusals=refusals, retry=retry or not nodes)
    holder = files_node(request.model)

    def score(view: NodeView) -> tuple:
        node = view.facts.node_id
        mine = sum(1 for r in reservations if r.node == node and r.deployment == request.deployment)
        free = view.facts.capacity_bytes - reserved_on(node, reservations, besides=request.instance_id)
        if request.strategy == "pack":
            return (-mine, node != holder, free, node)
        return (mine, node != holder, -free, node)

    return Choice(node=min(fitting, key=score).facts.node_id)


def _confirm(request: ReserveRequest, nodes: Sequence[NodeView], reservations: Sequence[Reservation]) -> Choice:
    """Re-reserve on request.node with the planned bytes: fit or refuse."""
    view = next((view for view in nodes if view.facts.node_id == request.node), None)
    if view is None:
        return Choice(refusals={request.node: "not a node of the cluster"})
    held = any(r.instance_id == request.instance_id and r.node == request.node for r in reservations)
    if held and view.status is NodeStatus.DRAINING:
        view = view.model_copy(update={"status": NodeStatus.READY})  # already there: not a new placement
    why = _filter(request.model_copy(update={"avoid": []}), view, reservations)
    if why is not None:
        return Choice(refusals={request.node: why})
    return Choice(node=request.node)


def free_by_node(request: ReserveRequest, nodes: Sequence[NodeView], reservations: Sequence[Reservation]) -> dict[str, int]:
    """Free bytes on every node the request could go to (memory aside), not counting the
    reservations of the request's own deployment (which it knows exactly, and which change while
    its answers travel): what its scale validator checks a count against."""
    others = [r for r in reservations if r.deployment != request.deployment]
    return {
        view.facts.node_id: max(0, view.facts.capacity_bytes - reserved_on(view.facts.node_id, others))
        for view in nodes
        if _filter(request.model_copy(update={"avoid": [], "node": None}), view, reservations, memory=False) is None
    }
