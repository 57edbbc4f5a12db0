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
"""

import gc


def freeze_start_up_objects() -> None:
    """Call once the process has imported and built what it serves with, before it serves."""
    gc.collect()
    gc.freeze()
