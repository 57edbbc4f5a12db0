"""Kill -9 the worker at each step of the pipeline: every deployment still ends DEPLOYED, with
exactly one engine process, one port reservation and one route."""

import asyncio
import os
import signal
import socket
import subprocess

import pytest

from berth.node.ports import registry
from berth.domain.pipeline import SUPERVISE
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.testing.harness import engine_processes, start_deployment, wait_for_status
from berth.worker.fault_injection import FAULT_FILE
from berth.worker.takeover import TAKEN_OVER, holder_is_dead
from berth.node.routes import routed

STEPS = [
    "end:prepare_files",  # the engine chosen, the files in place, the result never reached Temporal
    "end:allocate_port",
    "end:configure_route",
    "end:launch_engine",  # the engine runs, its handle never reached Temporal
    "start:await_ready",
    "start:supervise",  # while DEPLOYED
]


@pytest.mark.parametrize("point", STEPS)
async def test_worker_killed_at_each_step(stack, client, tiny_gguf, name, point):
    fault = stack.home / FAULT_FILE
    fault.parent.mkdir(exist_ok=True)
    fault.write_text(point)
    worker = stack.worker_pid()
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf)))
    try:
        for _ in range(600):  # the worker dies at that point
            if not fault.exists() and stack.worker_pid() != worker:
                break
            await asyncio.sleep(0.05)
        assert not fault.exists(), f"the pipeline never reached {point}"
        state = await wait_for_status(client, name, S.DEPLOYED, timeout_s=90)
        if point == "start:supervise":
            # it was DEPLOYED before the crash; it must be serving again with the same engine
            await asyncio.sleep(1)
            state = await wait_for_status(client, name, S.DEPLOYED)
        engines = engine_processes(stack.home, name)
        assert len(engines) == 1, engines
        assert engines[0].pid == state.pid
        reservations = [i for i in registry(stack.settings).reserved() if i.startswith(f"{name}-")]
        assert reservations == [state.instances[0].instance_id]
        assert name in routed(stack.settings.routes_dir)
    finally:
        fault.unlink(missing_ok=True)
        handle = client.get_workflow_handle(f"deployment-{name}")
        await handle.signal("stop")
        await handle.result()
    assert not engine_processes(stack.home, name)


async def test_a_restarted_worker_takes_over_supervision_at_once(stack, client, tiny_gguf, name):
    """supervise's heartbeat timeout is long; the restarted worker does not wait it out: it fails
    the attempt its dead predecessor holds, the retry runs on the new worker, and it watches the
    same engine (a crash of that engine is then noticed and the engine restarted)."""
    fault = stack.home / FAULT_FILE
    fault.parent.mkdir(exist_ok=True)
    fault.write_text("start:supervise")
    dead = stack.worker_pid()
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf)))
    handle = client.get_workflow_handle(f"deployment-{name}")
    try:
        for _ in range(600):
            if not fault.exists() and stack.worker_pid() not in (None, dead):
                break
            await asyncio.sleep(0.05)
        assert not fault.exists(), "the pipeline never reached supervise"
        dead_identity = f"{dead}@{socket.gethostname()}"
        supervising = None
        for _ in range(450):  # 45 s, less than supervise's heartbeat timeout
            pending = [p for p in (await handle.describe()).raw_description.pending_activities
                       if p.activity_type.name == SUPERVISE]
            if pending and pending[0].attempt >= 2 and pending[0].last_worker_identity not in ("", dead_identity):
                supervising = pending[0]
                break
            await asyncio.sleep(0.1)
        assert supervising is not None, "the new worker did not take supervise over"
        assert TAKEN_OVER == supervising.last_failure.application_failure_info.type
        assert dead_identity in supervising.last_failure.message

        state = await wait_for_status(client, name, S.DEPLOYED)
        os.kill(state.pid, signal.SIGKILL)  # watched by the new worker: noticed, and restarted
        for _ in range(300):
            after = await wait_for_status(client, name, S.DEPLOYED)
            if after.pid != state.pid:
                break
            await asyncio.sleep(0.1)
        assert after.pid != state.pid and len(engine_processes(stack.home, name)) == 1
    finally:
        fault.unlink(missing_ok=True)
        await handle.signal("stop")
        await handle.result()
    assert not engine_processes(stack.home, name)


def test_only_a_dead_worker_of_this_node_counts_as_dead(stack, tmp_path):
    host = socket.gethostname()
    worker = stack.worker_pid()
    assert not holder_is_dead(f"{worker}@{host}", stack.home)  # alive, this home's worker
    assert holder_is_dead(f"{worker}@{host}", tmp_path)  # alive, but a worker of another home
    assert holder_is_dead(f"{os.getpid()}@{host}", stack.home)  # alive, not a worker: the pid was reused
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert holder_is_dead(f"{gone.pid}@{host}", stack.home)
    assert not holder_is_dead(f"{worker}@another-host", stack.home)  # not ours to judge
    assert not holder_is_dead("a-custom-identity", stack.home)
