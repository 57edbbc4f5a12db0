"""What a deployment does when the cluster tells it about its nodes (berth.workflows.cluster):

    node_lost(NodeEvent)        the node is DOWN (its reservations are gone): every instance there is
                                replaced. Its runner ends at once (its activities on the dead node
                                are abandoned: never waited on), it leaves the route, and a new
                                instance (new id) is placed elsewhere by the usual convergence:
                                counted in `replaced`, not as an engine restart. Nothing is stopped
                                on the lost node: it fences itself when it comes back.
    node_draining(NodeEvent)    surge: for each instance there, a new one elsewhere; once it serves
                                and is in the route, the old one is retired (out of the route,
                                drained, stopped, released). A new one that cannot start leaves the
                                old one serving. An instance there that does not serve is retired
                                at once (convergence places its successor elsewhere).
    nodes_changed(RoutingNodes) the gateways a route reaches changed: the route goes to each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from berth.domain.cluster import NodeEvent, RoutingNodes
    from berth.domain.state import InstanceState
    from berth.domain.status import DeploymentStatus, InstanceStatus

if TYPE_CHECKING:
    from berth.workflows.deployment import DeploymentWorkflow


async def replace_lost(deployment: DeploymentWorkflow, event: NodeEvent) -> None:
    state = deployment.state
    deployment.take_routing(event.routing)
    lost = [instance for instance in state.instances if instance.node == event.node]
    for instance in lost:
        runner = deployment.runners.pop(instance.instance_id, None)
        if runner is not None:
            runner.abandon()
        state.instances.remove(instance)
        deployment.surging.discard(instance.instance_id)
        state.replaced += 1
    if not lost:
        await deployment.sync_route()
        return
    serving = state.ready_replicas
    status = DeploymentStatus.DEPLOYED if serving else DeploymentStatus.DEPLOYING
    if not state.instances and state.status is not DeploymentStatus.DEPLOYED:
        status = state.status
    deployment.keep.transition(
        status, f"node {event.node} lost ({event.reason}): {len(lost)} instance(s) replaced elsewhere"
    )
    await deployment.sync_route()
    deployment.wake()


async def drain_node(deployment: DeploymentWorkflow, event: NodeEvent) -> None:
    state = deployment.state
    deployment.take_routing(event.routing)
    for old in [instance for instance in state.instances if instance.node == event.node]:
        if deployment.interrupted or old not in state.instances or old.instance_id in deployment.surging:
            continue
        if old.status is not InstanceStatus.DEPLOYED:
            await deployment.retire(old)
            state.replaced += 1
            continue
        deployment.surging.add(old.instance_id)
        new = InstanceState(instance_id=f"{state.spec.name}-{workflow.uuid4().hex[:8]}")
        state.instances.append(new)
        runner = deployment.start_instance(new, state.spec, once=True)
        await workflow.wait_condition(
            lambda: (new.status is InstanceStatus.DEPLOYED and new.routed)
            or not runner.running or deployment.interrupted or old not in state.instances
        )
        deployment.surging.discard(old.instance_id)
        if deployment.interrupted:
            return
        if new.status is InstanceStatus.DEPLOYED and new.routed:
            if old in state.instances:
                await deployment.retire(old)
                state.replaced += 1
        elif new in state.instances:  # it could not start elsewhere: the old one keeps serving
            await deployment.retire(new)
    deployment.wake()


async def nodes_changed(deployment: DeploymentWorkflow, nodes: RoutingNodes) -> None:
    deployment.take_routing(nodes.routing)
    await deployment.sync_route()
