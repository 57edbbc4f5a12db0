"""A rollout: a DEPLOYED deployment takes a new spec one instance at a time, without dropping a
request (docs/replicas.md).

    for each old instance: start one new instance with the new spec -> it serves (through the
    gateway: await_ready checks the route too) -> it joins the route -> one old instance leaves the
    route, is drained, and stops

A new instance that fails (any code: OOM, a loading failure, a timeout, a crash) is not restarted:
it is stopped, the rollout ends there and rolls back (the new instances it had started leave and
stop; the old ones kept serving throughout), the spec stays the old one, and the state's `rollout`
and `rollout_error` say which code, why, and what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from berth.domain.spec import DeploymentSpec
    from berth.domain.state import InstanceState
    from berth.domain.status import DeploymentStatus, InstanceStatus

if TYPE_CHECKING:
    from berth.workflows.deployment import DeploymentWorkflow


async def roll(deployment: DeploymentWorkflow, spec: DeploymentSpec) -> None:
    state, keep = deployment.state, deployment.keep
    old = list(state.instances)
    started: list[InstanceState] = []
    keep.transition(DeploymentStatus.DEPLOYED, f"rollout started: {len(old)} instance(s) to replace")
    state.rollout, state.rollout_error = f"rolling: 0/{len(old)} replaced", None
    for done, previous in enumerate(old):
        new = InstanceState(instance_id=f"{spec.name}-{workflow.uuid4().hex[:8]}", node=previous.node)
        state.instances.append(new)
        started.append(new)
        runner = deployment.start_instance(new, spec, once=True)
        await workflow.wait_condition(
            lambda: (new.status is InstanceStatus.DEPLOYED and new.routed)
            or not runner.running or deployment.interrupted
        )
        if deployment.interrupted:  # a stop or retry takes over; it stops every instance
            state.rollout = "rollout interrupted by a stop or retry"
            return
        if new.status is not InstanceStatus.DEPLOYED:
            await _roll_back(deployment, started, new)
            return
        if done == len(old) - 1:  # every new instance serves: no rollback any more, the spec is the new one
            state.spec = spec
        await deployment.retire(previous)
        state.rollout = f"rolling: {done + 1}/{len(old)} replaced"
    state.rollout = None
    keep.transition(DeploymentStatus.DEPLOYED, f"rollout done: {len(old)} instance(s) replaced")


async def _roll_back(deployment: DeploymentWorkflow, started: list[InstanceState], failed: InstanceState) -> None:
    state, keep = deployment.state, deployment.keep
    error = failed.error
    for instance in reversed(started):
        if instance in state.instances:
            await deployment.retire(instance)
    # the old instances that were already replaced are back to the desired count with the old spec
    state.rollout_error = error
    what = f"{error.code.value}: {error.message}" if error else "the new instance stopped"
    state.rollout = f"rollout failed and rolled back (the spec is unchanged): {what}"
    keep.transition(DeploymentStatus.DEPLOYED, state.rollout)
