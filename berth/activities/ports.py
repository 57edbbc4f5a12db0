"""allocate_port and release_port: an engine port for an instance, from this node's port table
(berth.node.ports)."""

import asyncio

from temporalio import activity

from berth.domain.pipeline import ALLOCATE_PORT, RELEASE_PORT, PortRequest
from berth.node.ports import registry
from berth.settings import Settings


@activity.defn(name=ALLOCATE_PORT)
async def allocate_port(request: PortRequest) -> int:
    return await asyncio.to_thread(registry(Settings.from_env()).allocate, request.instance_id)


@activity.defn(name=RELEASE_PORT)
async def release_port(request: PortRequest) -> None:
    await asyncio.to_thread(registry(Settings.from_env()).release, request.instance_id)
