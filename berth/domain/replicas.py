"""The rules of a deployment of several instances (docs/replicas.md), as pure functions:

- what the deployment's status becomes when one instance reports a change,
- which instances are the servers of the deployment's route,
- which instance a scale down takes first,
- whether N instances fit the node's memory, and the cluster's (as of its last answer).
"""

from collections.abc import Collection, Sequence

from berth.domain.hardware import gib
from berth.domain.pipeline import RouteServer
from berth.domain.spec import MAX_REPLICAS
from berth.domain.state import InstanceState
from berth.domain.status import DeploymentStatus, InstanceStatus

# an instance on its way to serving, or waiting out a backoff: it will serve again by itself
_ALIVE = frozenset(
    {InstanceStatus.REQUESTED, InstanceStatus.COPYING_FILES, InstanceStatus.STARTING, InstanceStatus.ERROR}
)
_WAITING_FOR_USER = frozenset({DeploymentStatus.FAILED, DeploymentStatus.MUST_REDOWNLOAD})


def status_after_report(
    reported: DeploymentStatus, reporter: str, instances: Sequence[InstanceState]
) -> DeploymentStatus | None:
    """The deployment's status after instance `reporter` reports `reported` (None: unchanged).

    DEPLOYED while at least one instance serves: an instance that serves makes it DEPLOYED, and
    while another one serves, what a failing or starting instance reports changes nothing (the
    deployment is then `degraded`). When none serves, the report is the deployment's status, except
    that FAILED and MUST_REDOWNLOAD (waiting for the user) wait until no other instance is still
    on its way (starting or in a backoff)."""
    if reported is DeploymentStatus.DEPLOYED:
        return reported
    others = [instance for instance in instances if instance.instance_id != reporter]
    if any(instance.status is InstanceStatus.DEPLOYED for instance in others):
        return None
    if reported in _WAITING_FOR_USER and any(instance.status in _ALIVE for instance in others):
        return None
    return reported


def route_ports(instances: Sequence[InstanceState], leaving: Collection[str] = ()) -> list[int]:
    """The ports the deployment's route points at: the instances that serve. When none serves, the
    ones on their way (so the first instance's route is written beside its launch and its readiness
    is seen through the gateway, as with one instance); nothing else would answer anyway. Instances
    in `leaving` (being drained) are never servers."""
    candidates = [instance for instance in instances if instance.instance_id not in leaving and instance.port]
    serving = [instance.port for instance in candidates if instance.status is InstanceStatus.DEPLOYED]
    if serving:
        return sorted(serving)
    return sorted(instance.port for instance in candidates if instance.status in _ALIVE)


def route_servers(instances: Sequence[InstanceState], leaving: Collection[str] = ()) -> list[RouteServer]:
    """route_ports' rule, with each server's instance and node (the route on every gateway)."""
    candidates = [instance for instance in instances if instance.instance_id not in leaving and instance.port and instance.node]
    serving = [instance for instance in candidates if instance.status is InstanceStatus.DEPLOYED]
    chosen = serving or [instance for instance in candidates if instance.status in _ALIVE]
    return sorted(
        (RouteServer(instance_id=instance.instance_id, node=instance.node, port=instance.port) for instance in chosen),
        key=lambda server: (server.node, server.port, server.instance_id),
    )


def scale_down_order(instances: Sequence[InstanceState]) -> list[InstanceState]:
    """Which instances a scale down takes, first to last: those that do not serve (newest first),
    then those that serve, newest first (`instances` is oldest first)."""
    newest_first = list(reversed(instances))
    idle = [instance for instance in newest_first if instance.status is not InstanceStatus.DEPLOYED]
    serving = [instance for instance in newest_first if instance.status is InstanceStatus.DEPLOYED]
    return idle + serving


def scale_refusal(replicas: int, per_instance_bytes: int | None, budget_bytes: int | None) -> str | None:
    """Why `replicas` instances cannot run (None: they can). The memory check needs the numbers of
    the memory plan (None before the first instance's files were planned: only the range is checked)."""
    if replicas < 0:
        return f"replicas must be 0 or more (got {replicas})"
    if replicas > MAX_REPLICAS:
        return f"replicas must be at most {MAX_REPLICAS} (got {replicas}): see docs/replicas.md"
    return memory_refusal(replicas, per_instance_bytes, budget_bytes)


def cluster_refusal(replicas: int, current: int, per_instance_bytes: int | None, free: dict[str, int]) -> str | None:
    """Why `replicas` instances cannot run beside the `current` ones, by the free memory per node of the
    cluster's last answer (None: they can, or nothing is known yet). Each node holds whole instances."""
    if not per_instance_bytes or not free or replicas <= current:
        return None
    room = sum(bytes_free // per_instance_bytes for bytes_free in free.values())
    if replicas - current <= room:
        return None
    nodes = ", ".join(f"{node}: {gib(bytes_free)}" for node, bytes_free in sorted(free.items()))
    return (
        f"{replicas} instances do not fit the cluster's memory: each needs {gib(per_instance_bytes)}; "
        f"{current} are placed, and the nodes had room for {room} more at the cluster's last answer "
        f"(free: {nodes}); at most {current + room} fit"
    )


def memory_refusal(replicas: int, per_instance_bytes: int | None, budget_bytes: int | None) -> str | None:
    if not per_instance_bytes or budget_bytes is None:
        return None
    needed = replicas * per_instance_bytes
    if needed <= budget_bytes:
        return None
    fitting = budget_bytes // per_instance_bytes
    return (
        f"{replicas} instances do not fit the node's memory: each needs {gib(per_instance_bytes)}, "
        f"{replicas} x {gib(per_instance_bytes)} = {gib(needed)}, more than the {gib(budget_bytes)} "
        f"berth's engines may use there; at most {fitting} fit"
    )
