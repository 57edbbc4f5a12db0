"""Shorter garbage-collector pauses in berth's long-running processes (worker, API).

A full collection walks every object the process tracks. Measured with gc.callbacks in P5a (400
supervised stand-ins): the worker's full collections paused it for 120-260 ms (median 127 ms),
and a state query, health probe or heartbeat arriving then waited that long. What the imports and
the start-up made (~75,000 objects in the worker, ~28 ms of every full collection on this
machine) lives as long as the process: `gc.freeze()` puts it out of the collector's reach (those
objects are still freed by reference counting; only a reference cycle among them that became
garbage would stay). Then: median 82 ms, max 136 ms. Raising the full-collection threshold as
well (10 -> 100) made them rarer but not the reads faster, and holds garbage cycles longer: not
done.

What the worker holds grows with what it serves: the workflows it has cached and the activities it
runs, ~320 tracked objects per supervised deployment. With 820 supervised stand-ins (P5a), full
collections came every ~15-20 s and paused the worker for 160-290 ms each; a forced one at 400
found 711 objects of garbage among ~128,000 walked (119 ms of CPU). So the worker also freezes
what has lived a while (`freeze_survivors`): every FREEZE_EVERY_S a collection of what is not yet
frozen (what was made since the last freeze: cheap), then a freeze of what survived it. Objects
frozen and later released are still freed by reference counting; a reference cycle among them that
becomes garbage (e.g. a stopped deployment's workflow and activity objects) waits for the next
reclaim: every RECLAIM_EVERY_S everything is unfrozen and collected once (one full pause), then
frozen again.
"""

import asyncio
import gc
import time

FREEZE_EVERY_S = 10.0
RECLAIM_EVERY_S = 1800.0


def freeze_start_up_objects() -> None:
    """Call once the process has imported and built what it serves with, before it serves."""
    freeze_now()


def freeze_now(reclaim: bool = False) -> None:
    """Collect what is not frozen (with `reclaim`: everything, unfrozen first), then freeze what is left."""
    if reclaim:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


async def freeze_survivors(
    stop: asyncio.Event, every_s: float = FREEZE_EVERY_S, reclaim_every_s: float = RECLAIM_EVERY_S
) -> None:
    """Until `stop`: freeze what survived every `every_s`, reclaiming all every `reclaim_every_s`."""
    last_reclaim = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except asyncio.TimeoutError:
            pass
        reclaim = time.monotonic() - last_reclaim >= reclaim_every_s
        freeze_now(reclaim)
        if reclaim:
            last_reclaim = time.monotonic()
