"""`berth up` stopped and started again: DEPLOYED deployments come back by themselves."""

import asyncio

from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.testing.harness import (
    RunningStack,
    deployment_state,
    engine_processes,
    start_deployment,
    wait_for_status,
)


async def test_deployments_survive_a_restart_of_the_stack(tmp_path, tiny_gguf):
    stack = RunningStack(tmp_path / "home").start()
    try:
        client = await stack.client()
        await start_deployment(client, DeploymentSpec(name="survivor", model=str(tiny_gguf)))
        before = await wait_for_status(client, "survivor", S.DEPLOYED)

        assert stack.stop() == 0
        assert not stack.leftovers(), "berth up left processes behind"
        assert "stopped 1 engine" in "".join(stack.output)

        stack.start()
        client = await stack.client()
        after = await deployment_state(client, "survivor")
        for _ in range(600):  # the workflow learns of the restart when the node's worker is back
            if after.status is S.DEPLOYED and after.pid != before.pid:
                break
            await asyncio.sleep(0.1)
            after = await deployment_state(client, "survivor")
        assert after.status is S.DEPLOYED and after.pid != before.pid, after
        assert after.error is None and after.attempts == 0, "a stack restart is not a failure"
        assert any("node restarted" in t.detail for t in after.transitions)
        assert len(engine_processes(stack.home, "survivor")) == 1
        response = stack.chat("survivor")
        assert response.status_code == 200
    finally:
        _, leftovers = stack.stop_and_reap()
    assert not leftovers
