"""A deployment that restarts many times keeps a bounded history: continue-as-new, state carried over."""

import os
import signal

from berth.domain.spec import DeploymentSpec, RestartPolicy
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import workflow_id
from berth.testing.harness import (
    RunningStack,
    engine_processes,
    start_deployment,
    until_restarted_or_down,
    wait_for_status,
)

SUGGEST_AFTER_EVENTS = 60


async def test_history_stays_bounded_across_restarts(tmp_path, tiny_gguf):
    stack = RunningStack(
        tmp_path / "home",
        extra_env={
            "BERTH_TEMPORAL_EXTRA_ARGS": "--dynamic-config-value "
            f"limit.historyCount.suggestContinueAsNew={SUGGEST_AFTER_EVENTS}"
        },
    ).start()
    try:
        client = await stack.client()
        policy = RestartPolicy(max_attempts=50, backoff_initial_s=0.05, backoff_max_s=0.05)
        handle = await start_deployment(client, DeploymentSpec(name="flappy", model=str(tiny_gguf), restart=policy))
        first_run = handle.result_run_id
        state = await wait_for_status(client, "flappy", S.DEPLOYED)
        kills = 6
        for _ in range(kills):
            os.kill(state.pid, signal.SIGKILL)
            await until_restarted_or_down(client, "flappy", state.pid)
            state = await wait_for_status(client, "flappy", S.DEPLOYED, timeout_s=30)

        current = await client.get_workflow_handle(workflow_id("flappy")).describe()
        assert current.run_id != first_run, "the workflow never continued as new"
        events = [e async for e in client.get_workflow_handle(workflow_id("flappy")).fetch_history_events()]
        assert len(events) < SUGGEST_AFTER_EVENTS * 2, len(events)
        # the state came along: every restart is still in the record, and the counter too
        assert sum(t.status is S.ERROR for t in state.transitions) == kills
        assert state.attempts == kills
        assert len(engine_processes(stack.home, "flappy")) == 1
    finally:
        _, leftovers = stack.stop_and_reap()
    assert not leftovers
