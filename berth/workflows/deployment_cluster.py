"""The deployment workflow's side of the cluster (docs/cluster.md), a part of DeploymentWorkflow:
its instances' reservations (the cluster workflow's answers, through local activities), the files
on each node, and the route on every gateway.
"""

import asyncio

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from berth.domain.cluster import Placement, ReserveRequest
    from berth.domain.pipeline import PreparedModel
    from berth.domain.placement import files_node
    from berth.domain.replicas import route_ports, route_servers
    from berth.domain.spec import DeploymentSpec
    from berth.domain.state import DeploymentState, InstanceState
    from berth.domain.status import DeploymentStatus, InstanceStatus

from berth.workflows.node_steps import NodeSteps, release, reserve
from berth.workflows.route_fanout import publish, unpublish


class ClusterPart:
    """What DeploymentWorkflow shares with its runners about nodes: set up by its __init__."""

    state: DeploymentState
    _route_lock: asyncio.Lock
    _files_locks: dict[str, asyncio.Lock]
    _leaving: set[str]
    _may_refetch: bool
    _wake: bool
    _local_ports: dict[str, list[int]]
    _announced: dict[str, int | None]  # instance -> the pid whose serving was reported

    def report(self, instance: InstanceState, status: DeploymentStatus, detail: str) -> None:
        raise NotImplementedError  # DeploymentWorkflow.report

    async def prepare_files(self, node: NodeSteps, spec: DeploymentSpec, instance: InstanceState) -> PreparedModel:
        """The files, prepared on each node by one instance at a time (the first fetches, the next
        find them). The node's plan checks the instances of this deployment it is to hold: those
        placed there, or its share of the replicas over the nodes the deployment may use (the
        cluster's reservations check the sum across deployments)."""
        lock = self._files_locks.setdefault(instance.node, asyncio.Lock())
        async with lock:
            here = sum(1 for each in self.state.instances if each.node == instance.node)
            share = -(-max(1, spec.replicas) // max(1, len(self.state.cluster_free)))
            source = self.state.routing.get(files_node(spec.model) or "")
            model = await node.prepare_files(spec, self._may_refetch, max(1, here, share), source)
            self._may_refetch = False
            return model

    async def reserve(self, instance: InstanceState, spec: DeploymentSpec, node: str | None = None,
                      bytes: int | None = None) -> Placement:
        """The cluster's answer for this instance (berth.workflows.cluster): a node, or every node's reason."""
        request = ReserveRequest(
            instance_id=instance.instance_id, deployment=spec.name, model=spec.model, engine=spec.engine,
            bytes=(self.state.memory_per_instance or 0) if bytes is None else bytes,
            pin=spec.node, allowed=list(spec.nodes), strategy=spec.placement, node=node,
        )
        answer = await reserve(request)
        self.take_routing(answer.routing)
        if answer.free:
            self.state.cluster_free = answer.free
        return answer

    async def release(self, instance: InstanceState) -> None:
        await release(instance.instance_id)
        instance.reserved_bytes = None

    def take_routing(self, routing: dict[str, str]) -> None:
        if routing:
            self.state.routing = dict(routing)

    def wake(self) -> None:
        self._wake = True

    async def sync_route(self) -> None:
        """Make the deployment's route, on every gateway, point at the instances it should
        (berth.domain.replicas.route_servers); one change at a time, each recorded once the
        gateways' files hold it (berth.workflows.route_fanout). Each node's request also names its
        own servers' ports (`ports`, read by a gateway that predates the cluster's routes): the
        rule of route_ports applied to that node's instances alone, so that an instance loading
        on a node where none serves yet can be seen ready through that node's gateway."""
        async with self._route_lock:
            state = self.state
            want = route_servers(state.instances, self._leaving)
            nodes = sorted(set(state.routing) | {server.node for server in want})
            local = {
                node: route_ports([each for each in state.instances if each.node == node], self._leaving)
                for node in nodes
            }
            if want == state.route_servers and nodes == state.route_nodes and local == self._local_ports:
                return
            state.route_servers, state.route_ports = None, None  # unknown until the change is made
            if want or any(local.values()):
                state.endpoint, took = await publish(state.spec, state.engine or "", want, state.routing, local)
            else:
                await unpublish(state.spec.name, nodes)
                state.endpoint, took = None, nodes
            state.route_servers, state.route_nodes, self._local_ports = want, took, local
            state.route_ports = sorted(server.port for server in want)
            routed = {server.instance_id for server in want}
            for instance in state.instances:
                instance.routed = instance.instance_id in routed
            for instance in state.instances:  # each that serves now, said in the same step: not once
                # its own runner has the lock (a state read meanwhile showed 3/3 ready and INITIALIZING)
                self.announce_serving(instance)

    def announce_serving(self, instance: InstanceState) -> None:
        """An instance that serves (DEPLOYED, in the route) makes the deployment DEPLOYED: reported
        once per engine it runs (its pid), by whichever comes first, its runner or a route change."""
        if instance.status is not InstanceStatus.DEPLOYED or not instance.routed:
            return
        if self._announced.get(instance.instance_id) == instance.pid:
            return
        self._announced[instance.instance_id] = instance.pid
        self.report(instance, DeploymentStatus.DEPLOYED, f"serving at {self.state.endpoint}")
