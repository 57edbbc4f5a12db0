"""Nothing orphaned: engines, ports, routes and memory reservations that no running deployment owns are reaped."""

import asyncio
import sys
import subprocess
from pathlib import Path

import psutil

from berth.node import process_runtime
from berth.node.engine_records import EngineRecord, EngineRecords
from berth.node.ports import port_is_free, registry
from berth.node.routes import write_route
from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODES_QUERY, ClusterView
from berth.domain.pipeline import LaunchRequest, RouteRequest
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import workflow_id
from berth.engines.llamacpp import LlamaCppEngine
from berth.testing.harness import engine_processes, start_deployment, wait_for_status
from berth.node.routes import routed
from tests.conftest import RECONCILE_INTERVAL_S

WITHIN_S = RECONCILE_INTERVAL_S * 3 + 5


async def gone(check, timeout_s: float = WITHIN_S) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.2)
    return check()


async def test_terminated_deployment_is_reaped_within_a_reconcile_period(stack, client, tiny_gguf, name):
    handle = await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf)))
    state = await wait_for_status(client, name, S.DEPLOYED)
    record = EngineRecords(stack.settings.run_dir).get(state.instances[0].instance_id)
    assert record.run_id == (await handle.describe()).run_id, "the record names the run that launched it"
    temporal = Path(sys.executable).parent / "temporal"
    subprocess.run(
        [str(temporal), "workflow", "terminate", "--address", stack.settings.temporal_address,
         "--workflow-id", workflow_id(name), "--reason", "test"],
        check=True, capture_output=True,
    )
    assert await gone(lambda: not engine_processes(stack.home, name)), "engine left running"
    assert await gone(lambda: name not in routed(stack.settings.routes_dir)), "route left behind"
    ports = registry(stack.settings)
    assert await gone(lambda: state.instances[0].instance_id not in ports.reserved()), "port still reserved"
    assert port_is_free(state.port)
    cluster = client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
    assert await gone_async(lambda: reserved(cluster), state.instances[0].instance_id), "memory still reserved"


async def reserved(cluster) -> set[str]:
    view = await cluster.query(NODES_QUERY, result_type=ClusterView)
    return {instance for node in view.nodes for instance in node.instances}


async def gone_async(read, instance_id: str, timeout_s: float = WITHIN_S) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while instance_id in await read():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def test_an_engine_no_deployment_owns_is_stopped_and_its_port_freed(stack, tiny_gguf):
    settings = stack.settings
    instance_id = "ghost-0badf00d"
    port = registry(settings).allocate(instance_id)
    request = LaunchRequest(
        instance_id=instance_id, deployment="ghost", engine="llamacpp",
        model_path=str(tiny_gguf), port=port,
    )
    command = LlamaCppEngine().command(request)
    command.env["BERTH_HOME"] = str(settings.home)
    records = EngineRecords(settings.run_dir)
    started = process_runtime.start(
        command, instance_id, settings.logs_dir / "ghost.log", records.exit_file(instance_id)
    )
    records.put(EngineRecord(
        instance_id=instance_id, deployment="ghost", engine="llamacpp", port=port,
        pid=started.pid, pid_create_time=started.pid_create_time, wrapper_pid=started.wrapper_pid,
        log_path=str(settings.logs_dir / "ghost.log"), log_offset=0,
        exit_file=str(records.exit_file(instance_id)), started_at=0,
    ))
    write_route(settings.routes_dir, RouteRequest(deployment="ghost", port=port, engine="llamacpp"), "tok")
    # and one engine that was never even recorded (its worker died between spawn and record)
    unrecorded = process_runtime.start(
        command, "ghost-unrecorded-1", settings.logs_dir / "ghost2.log", settings.run_dir / "x.exit"
    )
    try:
        assert await gone(lambda: not psutil.pid_exists(started.pid) or
                          psutil.Process(started.pid).status() == psutil.STATUS_ZOMBIE)
        assert await gone(lambda: not process_runtime.is_alive(unrecorded.pid, unrecorded.pid_create_time))
        assert await gone(lambda: instance_id not in registry(settings).reserved())
        assert await gone(lambda: "ghost" not in routed(settings.routes_dir))
        assert records.get(instance_id) is None
    finally:
        process_runtime.stop_group(started.wrapper_pid, grace_s=1)
        process_runtime.stop_group(unrecorded.wrapper_pid, grace_s=1)
