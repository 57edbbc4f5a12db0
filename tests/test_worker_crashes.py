"""Kill -9 the worker at each step of the pipeline: every deployment still ends DEPLOYED, with
exactly one engine process, one port reservation and one route."""

import asyncio

import pytest

from berth.activities.ports import registry
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.testing.harness import engine_processes, start_deployment, wait_for_status
from berth.worker.fault_injection import FAULT_FILE

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
        assert [p.name for p in stack.settings.routes_dir.glob(f"{name}.yml")] == [f"{name}.yml"]
    finally:
        fault.unlink(missing_ok=True)
        handle = client.get_workflow_handle(f"deployment-{name}")
        await handle.signal("stop")
        await handle.result()
    assert not engine_processes(stack.home, name)
