"""The rows of the console's Nodes table, from the cluster workflow's view (berth.domain.cluster):
what a user scans for per node. Pure: the view in, rows out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from berth.api.console.rows import age_text
from berth.domain.cluster import ClusterView, NodeStatus, NodeView

STATUS_CLASS = {
    NodeStatus.READY: "ok",
    NodeStatus.NOT_READY: "busy",
    NodeStatus.DRAINING: "warn",
    NodeStatus.DOWN: "bad",
}


# the button of a row: a DOWN node has nothing to drain (its instances were replaced already)
ACTIONS = {NodeStatus.READY: "drain", NodeStatus.NOT_READY: "drain", NodeStatus.DRAINING: "undrain", NodeStatus.DOWN: ""}


@dataclass
class NodeRow:
    node_id: str
    address: str  # the gateway's host:port, where peers reach the node
    status: str
    status_class: str
    since: str  # how long it has been in that status: '12s', '5m', ...
    reason: str | None
    ram: str
    gpus: str
    engines: str
    capacity: str
    reserved: str
    reserved_percent: int  # 0-100, of the capacity
    instances: int
    action: str  # "drain" | "undrain" | "" (no button)


def bytes_text(size: int) -> str:
    """'512 MiB', '7.8 GiB', '0 B'."""
    if size <= 0:
        return "0 B"
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value >= 100 or value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"


def address_of(gateway_url: str) -> str:
    """host:port of the node's gateway URL (the URL itself when it has no host)."""
    parts = urlsplit(gateway_url)
    if not parts.hostname:
        return gateway_url
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname


def gpus_text(node: NodeView) -> str:
    gpus = node.facts.gpus
    if not gpus:
        return "none"
    return ", ".join(f"{gpu.name} ({bytes_text(gpu.memory_bytes)})" for gpu in gpus)


def node_row(node: NodeView, now: datetime | None = None) -> NodeRow:
    facts = node.facts
    capacity = facts.capacity_bytes
    percent = min(100, round(100 * node.reserved_bytes / capacity)) if capacity > 0 else (100 if node.reserved_bytes else 0)
    return NodeRow(
        node_id=facts.node_id,
        address=address_of(facts.gateway_url),
        status=node.status.value,
        status_class=STATUS_CLASS.get(node.status, "idle"),
        since=age_text(node.since if node.since.tzinfo else node.since.replace(tzinfo=timezone.utc), now),
        reason=node.reason,
        ram=bytes_text(facts.ram_bytes),
        gpus=gpus_text(node),
        engines=", ".join(facts.engines) or "none",
        capacity=bytes_text(capacity),
        reserved=bytes_text(node.reserved_bytes),
        reserved_percent=percent,
        instances=len(node.instances),
        action=ACTIONS[node.status],
    )


def node_rows(view: ClusterView | None, now: datetime | None = None) -> list[NodeRow]:
    if view is None:
        return []
    return [node_row(node, now) for node in sorted(view.nodes, key=lambda node: node.facts.node_id)]
