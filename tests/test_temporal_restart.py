"""kill -9 the Temporal dev server under a running `berth up`: the stack starts it again on the same
SQLite database, and every deployment keeps its state. The engines are berth's, not Temporal's:
DEPLOYED ones keep serving through the gateway during the outage and after it, and a crash after
the restart is still seen and recovered."""

import asyncio
import os
import signal
import time

import psutil

from berth.domain.spec import DeploymentSpec, RestartPolicy
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus as S
from berth.testing.harness import (
    RunningStack,
    deployment_state,
    engine_processes,
    processes_with_home,
    start_deployment,
    until_restarted_or_down,
    wait_for_status,
)
from berth.worker.temporal_server import temporal_answers

QUICK_RESTARTS = RestartPolicy(max_attempts=5, backoff_initial_s=0.2, backoff_max_s=0.5)
SERVING = ("alpha", "beta")
BROKEN = "broken"
BACK_WITHIN_S = 60  # Temporal restarted, the worker polling again, queries answered


def temporal_server(home) -> psutil.Process | None:
    for process in processes_with_home(home):
        try:
            if "server start-dev" in " ".join(process.cmdline()):
                return process
        except psutil.NoSuchProcess:
            continue
    return None


async def state_when_answered(client, name: str, timeout_s: float = BACK_WITHIN_S) -> DeploymentState:
    """The `state` query, retried while Temporal or the worker is still coming back."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await asyncio.wait_for(deployment_state(client, name), 5)
        except Exception as error:  # connection refused, no poller yet, query timeout
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer to the state query of {name}: {error!r}") from error
            await asyncio.sleep(0.2)


async def test_deployments_keep_their_state_and_keep_serving_through_a_temporal_restart(
    tmp_path, tiny_gguf, garbage_gguf
):
    stack = RunningStack(tmp_path / "home").start()
    try:
        client = await stack.client()
        for name in SERVING:
            await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), restart=QUICK_RESTARTS))
        await start_deployment(client, DeploymentSpec(name=BROKEN, model=str(garbage_gguf)))
        before = {
            name: await wait_for_status(client, name, {S.DEPLOYED, S.FAILED})
            for name in (*SERVING, BROKEN)
        }
        assert [before[name].status for name in SERVING] == [S.DEPLOYED, S.DEPLOYED], before
        assert before[BROKEN].status is S.FAILED, before[BROKEN]
        for name in SERVING:
            assert stack.chat(name).status_code == 200

        server = temporal_server(stack.home)
        assert server is not None, "no `temporal server start-dev` among the stack's processes"
        server.kill()
        server.wait(5)
        killed_at = time.monotonic()

        # the outage: until Temporal answers again, the engines serve through the gateway
        chats_during = []
        while True:
            for name in SERVING:
                response = stack.chat(name)
                chats_during.append((round(time.monotonic() - killed_at, 2), name, response.status_code))
            restarted = temporal_server(stack.home)
            if restarted is not None and restarted.pid != server.pid and temporal_answers(stack.settings):
                break
            assert time.monotonic() - killed_at < BACK_WITHIN_S, "the stack did not restart Temporal"
            await asyncio.sleep(0.05)
        back_in_s = time.monotonic() - killed_at
        assert all(code == 200 for _, _, code in chats_during), chats_during
        assert chats_during[0][0] < 1, "the first chat was not during the outage"
        stack.wait_for_output("temporal exited")

        after = {name: await state_when_answered(client, name) for name in (*SERVING, BROKEN)}
        answered_in_s = time.monotonic() - killed_at
        print(f"\nTemporal back in {back_in_s:.2f} s, queries answered {answered_in_s:.2f} s after the kill; "
              f"{len(chats_during)} chats during the outage, all 200; restarts: "
              + "; ".join(line.strip() for line in stack.output if "exited with status" in line))
        for name in (*SERVING, BROKEN):
            assert after[name].status is before[name].status, (name, after[name].transitions)
            assert after[name].pid == before[name].pid, f"{name}: the engine changed"
            assert after[name].instances[0].instance_id == before[name].instances[0].instance_id
            assert after[name].transitions == before[name].transitions, f"{name}: new transitions"
        assert after[BROKEN].error == before[BROKEN].error
        for name in SERVING:
            assert [p.pid for p in engine_processes(stack.home, name)] == [before[name].pid]
            assert stack.chat(name).status_code == 200
        assert not engine_processes(stack.home, BROKEN)

        # still supervised: an engine killed after the restart is seen and brought back
        os.kill(after["alpha"].pid, signal.SIGKILL)
        crashed = await until_restarted_or_down(client, "alpha", after["alpha"].pid)
        assert crashed.status is not S.FAILED, crashed.error
        if crashed.status is S.ERROR:
            assert "signal 9" in crashed.error.message, crashed.error
        def errors(state):
            return [t for t in state.transitions if t.status is S.ERROR]

        assert len(errors(crashed)) == len(errors(after["alpha"])) + 1, crashed.transitions
        assert errors(crashed)[-1].detail.startswith("CONTAINER_EXITED"), crashed.transitions
        revived = await wait_for_status(client, "alpha", S.DEPLOYED, timeout_s=30)
        assert revived.pid != before["alpha"].pid
        assert [p.pid for p in engine_processes(stack.home, "alpha")] == [revived.pid]
        assert stack.chat("alpha").status_code == 200
        beta = await deployment_state(client, "beta")
        assert beta.status is S.DEPLOYED and beta.pid == before["beta"].pid
    finally:
        code, leftovers = stack.stop_and_reap()
    assert code == 0, "berth up did not exit cleanly:\n" + "".join(stack.output)
    assert not leftovers, f"processes left behind: {leftovers}"
