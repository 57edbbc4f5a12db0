"""launch_engine and stop_engine: start an engine for an instance, at most once; stop it for good.

launch_engine is idempotent: a retried launch finds the engine it started through the node's
engine record (or, if the worker died between spawning and recording, through the instance marker
in the process environment, and then replaces that unrecorded process).
"""

import asyncio
import time
from dataclasses import replace

from temporalio import activity

from berth.activities import process_runtime
from berth.activities.engine_records import EngineRecord, EngineRecords
from berth.activities.logs import log_path
from berth.domain.pipeline import LAUNCH_ENGINE, STOP_ENGINE, EngineHandle, LaunchRequest, StopRequest
from berth.engines.registry import get_engine
from berth.settings import Settings


def handle_of(record: EngineRecord) -> EngineHandle:
    return EngineHandle(
        instance_id=record.instance_id,
        deployment=record.deployment,
        engine=record.engine,
        port=record.port,
        pid=record.pid,
        log_path=record.log_path,
        log_offset=record.log_offset,
        started_at=record.started_at,
    )


def launch(settings: Settings, request: LaunchRequest) -> EngineHandle:
    records = EngineRecords(settings.run_dir)
    record = records.get(request.instance_id)
    if (
        record is not None
        and not record.stopped_by_shutdown
        and record.port == request.port
        and process_runtime.is_alive(record.pid, record.pid_create_time)
    ):
        return handle_of(record)  # a retried launch: the engine is already running
    stop_instance(records, request.instance_id, grace_s=2.0)  # leftovers of an earlier launch

    command = get_engine(request.engine).command(request)
    # which node's engine this is, for reconcile (the worker's own BERTH_HOME may be a default)
    command = replace(command, env={**command.env, "BERTH_HOME": str(settings.home)})
    path = log_path(settings.logs_dir, request.deployment)
    exit_file = records.exit_file(request.instance_id)
    started = process_runtime.start(command, request.instance_id, path, exit_file)
    record = EngineRecord(
        instance_id=request.instance_id,
        deployment=request.deployment,
        engine=request.engine,
        port=request.port,
        pid=started.pid,
        pid_create_time=started.pid_create_time,
        wrapper_pid=started.wrapper_pid,
        log_path=str(path),
        log_offset=started.log_offset,
        exit_file=str(exit_file),
        started_at=time.time(),
    )
    records.put(record)
    return handle_of(record)


def stop_instance(records: EngineRecords, instance_id: str, grace_s: float = 10.0) -> None:
    """Stop whatever runs for this instance, recorded or not, and forget it. Idempotent."""
    record = records.get(instance_id)
    if record is not None:
        process_runtime.stop_group(record.wrapper_pid, grace_s)
    unrecorded = process_runtime.find_marked(instance_id)
    if unrecorded:
        process_runtime.kill_processes(unrecorded)
    records.remove(instance_id)


@activity.defn(name=LAUNCH_ENGINE)
async def launch_engine(request: LaunchRequest) -> EngineHandle:
    return await asyncio.to_thread(launch, Settings.from_env(), request)


@activity.defn(name=STOP_ENGINE)
async def stop_engine(request: StopRequest) -> None:
    records = EngineRecords(Settings.from_env().run_dir)
    await asyncio.to_thread(stop_instance, records, request.instance_id)


def stop_all_for_node_shutdown(settings: Settings) -> int:
    """`berth up` is going down: stop every engine of this node, marking each record so that its
    deployment relaunches it on the next `berth up` instead of counting a failure. Returns how many."""
    records = EngineRecords(settings.run_dir)
    stopped = 0
    for record in records.all():
        records.mark_stopped_by_shutdown(record.instance_id)
        if process_runtime.is_alive(record.pid, record.pid_create_time):
            stopped += 1
        process_runtime.stop_group(record.wrapper_pid)
    return stopped
