"""freeze_start_up_objects: what the worker's start-up made is out of the collector's reach."""

import subprocess
import sys

FREEZE_IN_A_FRESH_WORKER_PROCESS = """
import gc
import berth.worker.main
from berth.gc_pauses import freeze_start_up_objects
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
