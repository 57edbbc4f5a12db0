"""What this node tells the cluster when its worker joins (berth.domain.cluster.NodeFacts)."""

import logging

from berth.domain.cluster import NodeFacts, NodeGpu
from berth.domain.memory import memory_budget
from berth.engines.selection import assess_engines
from berth.node.hardware import probe_hardware
from berth.node.memory_plan import NODE_CAPACITY_ENV, memory_limit, node_capacity
from berth.settings import Settings

log = logging.getLogger(__name__)


def node_facts(settings: Settings, incarnation: str) -> NodeFacts:
    """What this node tells the cluster. Capacity: the memory budget its memory plan uses (the
    largest of its engines'), capped by BERTH_MEMORY_LIMIT, counted as if no engine ran yet (the
    engines a restarted worker re-adopts hold reservations already); BERTH_NODE_CAPACITY in its place
    when set (an invalid one is logged and ignored: no overcommit by mistake)."""
    hardware = probe_hardware(max_age_s=0)
    idle = hardware.model_copy(update={"ram_available": hardware.ram_total})
    engines = sorted({a.engine for a in assess_engines(None, hardware) if a.can_run})
    try:
        limit = memory_limit()
    except ValueError:
        limit = None
    capacity = max((memory_budget(engine, idle, limit).bytes for engine in engines or ["llamacpp"]), default=0)
    try:
        capacity = node_capacity() or capacity
    except ValueError as bad:
        log.error("%s ignored: %s; the node offers its memory budget, %d bytes", NODE_CAPACITY_ENV, bad, capacity)
    return NodeFacts(
        node_id=settings.node_id,
        gateway_url=settings.peer_gateway_url,
        incarnation=incarnation,
        os=hardware.os,
        arch=hardware.arch,
        ram_bytes=hardware.ram_total,
        gpus=[NodeGpu(name=gpu.name, memory_bytes=gpu.memory_total) for gpu in hardware.gpus],
        docker=hardware.docker_available,
        mlx=hardware.mlx_lm_installed,
        engines=engines,
        capacity_bytes=capacity,
    )
