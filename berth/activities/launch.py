"""launch_engine and stop_engine: start an engine for an instance, at most once (a retried launch
finds the engine it started); stop it for good (berth.node.engine_launch)."""

import asyncio

from temporalio import activity

from berth.domain.pipeline import LAUNCH_ENGINE, STOP_ENGINE, EngineHandle, LaunchRequest, StopRequest
from berth.node.engine_launch import launch, stop_instance
from berth.node.engine_records import EngineRecords
from berth.settings import Settings


@activity.defn(name=LAUNCH_ENGINE)
async def launch_engine(request: LaunchRequest) -> EngineHandle:
    info = activity.info()
    return await asyncio.to_thread(launch, Settings.from_env(), request, info.attempt == 1, info.workflow_run_id or "")


@activity.defn(name=STOP_ENGINE)
async def stop_engine(request: StopRequest) -> None:
    records = EngineRecords(Settings.from_env().run_dir)
    await asyncio.to_thread(stop_instance, records, request.instance_id)
