"""launch_engine and stop_engine: start an engine for an instance, at most once (a retried launch
finds the engine it started); stop it for good (berth.node.engine_launch)."""

import asyncio

from temporalio import activity

from berth.domain.pipeline import LAUNCH_ENGINE, STOP_ENGINE, EngineHandle, LaunchRequest, StopRequest
from berth.domain.status import InstanceStatus
from berth.node.engine_launch import launch, stop_instance
from berth.node.engine_records import EngineRecords
from berth.node.instance_counts import COUNTS
from berth.settings import Settings


@activity.defn(name=LAUNCH_ENGINE)
async def launch_engine(request: LaunchRequest) -> EngineHandle:
    info = activity.info()
    settings = Settings.from_env()
    handle = await asyncio.to_thread(launch, settings, request, info.attempt == 1, info.workflow_run_id or "")
    COUNTS.set(request.instance_id, InstanceStatus.STARTING, settings.node_id)  # berth_instances
    return handle


@activity.defn(name=STOP_ENGINE)
async def stop_engine(request: StopRequest) -> None:
    settings = Settings.from_env()
    await asyncio.to_thread(stop_instance, EngineRecords(settings.run_dir), request.instance_id)
    COUNTS.forget(request.instance_id, settings.node_id)
