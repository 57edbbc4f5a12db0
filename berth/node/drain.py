"""Draining an instance that left its deployment's route, before its engine is stopped (scale down,
a rollout's old instance, a move off a draining node): what the drain_engine activity does.

    1. the route change is applied: ROUTE_SETTLE_S after configure_route wrote it on every gateway
       (Traefik applies a changed route file ~0.17 s after the write: measured; its own metrics
       cannot say more precisely, their last-reload time is in whole seconds);
    2. no request in flight: the engine's own count (Engine.in_flight: llama.cpp's
       requests_processing + requests_deferred, vLLM's running + waiting) reads 0 twice in a row,
       POLL_S apart; at most the deployment's `drain_timeout_s` from the start. An engine that
       cannot count (MLX) gets the fixed NO_COUNT_WAIT_S instead; one that no longer answers has
       nothing in flight (one too busy to answer in time is asked again).

It never fails: a drain that ran out of time says how many requests it leaves to be cut, and the
workflow stops the engine anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from berth.domain.pipeline import DrainOutcome, DrainRequest
from berth.engines.registry import get_engine
from berth.node.engine_records import EngineRecords
from berth.node.probe_client import probe_client
from berth.settings import Settings

ROUTE_SETTLE_S = 0.5
NO_COUNT_WAIT_S = 1.0  # the fixed drain of before, for an engine that cannot count its requests
POLL_S = 0.1
IDLE_READS = 2
UNKNOWN = -1  # a look that got no count


async def drain_engine(request: DrainRequest, settings: Settings, heartbeat: Callable[[], None]) -> DrainOutcome:
    started = time.monotonic()
    deadline = started + max(request.timeout_s, ROUTE_SETTLE_S)
    record = EngineRecords(settings.run_dir).get(request.instance_id)
    if record is None:
        return DrainOutcome(idle=True, waited_s=0.0, detail="no engine of this instance on the node")
    await asyncio.sleep(ROUTE_SETTLE_S)
    heartbeat()
    engine = get_engine(record.engine)
    base_url = f"http://127.0.0.1:{record.port}"
    idle_reads = 0
    while True:
        try:
            count = await engine.in_flight(probe_client(), base_url)
        except httpx.ConnectError:  # nothing listens on its port any more: nothing of it is in flight
            return _outcome(started, True, 0, "the engine no longer answers")
        except httpx.TransportError:  # too busy to answer in time, or on its way out: look again
            count = UNKNOWN
        if count is None:
            await asyncio.sleep(max(0.0, min(NO_COUNT_WAIT_S, deadline - time.monotonic())))
            return _outcome(started, False, None, f"{engine.name} cannot count its requests: waited a fixed {NO_COUNT_WAIT_S:g} s")
        idle_reads = idle_reads + 1 if count == 0 else 0
        if idle_reads >= IDLE_READS:
            return _outcome(started, True, 0, "no request in flight")
        if time.monotonic() >= deadline:
            left = "requests (the engine did not answer how many)" if count == UNKNOWN else f"{count} request(s)"
            return _outcome(
                started, False, None if count == UNKNOWN else count,
                f"{left} still in flight after the drain timeout ({request.timeout_s:g} s): cut by the stop",
            )
        heartbeat()
        await asyncio.sleep(POLL_S)


def _outcome(started: float, idle: bool, in_flight: int | None, detail: str) -> DrainOutcome:
    waited = time.monotonic() - started
    return DrainOutcome(idle=idle, waited_s=round(waited, 3), in_flight=in_flight, detail=f"{detail} ({waited:.2f} s)")
