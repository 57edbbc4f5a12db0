"""freeze_start_up_objects: what the worker's start-up made is out of the collector's reach."""

import subprocess
import sys

FREEZE_IN_A_FRESH_WORKER_PROCESS = """
import gc
import berth.worker.main
from berth.common.gc_pauses import freeze_start_up_objects
before = len(gc.get_objects())
freeze_start_up_objects()
print(before, gc.get_freeze_count(), len(gc.get_objects()))
"""


def test_the_worker_imports_are_frozen_and_the_collector_tracks_almost_nothing_after():
    out = subprocess.run(
        [sys.executable, "-c", FREEZE_IN_A_FRESH_WORKER_PROCESS], capture_output=True, text=True, check=True
    ).stdout
    tracked_before, frozen, tracked_after = map(int, out.split())
    assert tracked_before > 20_000, "the worker's imports make tens of thousands of objects"
    assert frozen >= tracked_before * 0.9, "nearly all of them frozen (a few were garbage, collected first)"
    assert tracked_after < 100, "a full collection now walks only what was made after"


class _Cycle:
    def __init__(self):
        self.me = self


async def test_survivors_are_frozen_and_a_reclaim_frees_the_cycles_among_them():
    import asyncio
    import gc
    import weakref

    from berth.common.gc_pauses import freeze_now, freeze_survivors

    try:
        kept, dropped = _Cycle(), _Cycle()
        dropped_ref = weakref.ref(dropped)
        freeze_now()
        frozen = gc.get_freeze_count()
        assert frozen > 0 and not any(o is kept for o in gc.get_objects()), "what lived is out of the collector's way"
        del dropped
        gc.collect()
        assert dropped_ref() is not None, "a cycle that became garbage while frozen waits for the reclaim"
        freeze_now(reclaim=True)
        assert dropped_ref() is None, "the reclaim collects it"
        assert kept.me is kept

        stop = asyncio.Event()
        later = _Cycle()
        loop = asyncio.create_task(freeze_survivors(stop, every_s=0.05, reclaim_every_s=3600))
        await asyncio.sleep(0.2)
        assert not any(o is later for o in gc.get_objects()), "the loop froze what was made after it started"
        stop.set()
        await asyncio.wait_for(loop, 1)
    finally:
        gc.unfreeze()
