"""HeldExitWatch: one pidfd held while supervise watches a native engine, on real processes."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from berth.node.engine_records import EngineRecord
from berth.node.engine_watch import HeldExitWatch, wait_for_exit


def _record(pid: int, create_time: float, runtime: str = "process") -> EngineRecord:
    return EngineRecord(
        instance_id="w-1", deployment="w", engine="llamacpp", port=1, pid=pid, pid_create_time=create_time,
        wrapper_pid=0, log_path="/dev/null", log_offset=0, exit_file="", started_at=time.time(), runtime=runtime,
    )


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


async def test_a_kill_is_seen_at_once_and_a_live_engine_waits_out_the_timeout():
    process = _sleeper()
    try:
        watch = HeldExitWatch.open(_record(process.pid, psutil.Process(process.pid).create_time()))
        assert watch is not None and not watch.exited()
        started = time.monotonic()
        assert await watch.wait(0.2) is False, "still running"
        assert time.monotonic() - started >= 0.19
        process.send_signal(signal.SIGKILL)
        started = time.monotonic()
        assert await watch.wait(10) is True
        assert time.monotonic() - started < 2, "the exit wakes the wait, not the timeout"
        assert watch.exited()
        watch.close()
    finally:
        process.kill()
        process.wait()


async def test_no_watch_for_a_process_that_is_not_the_engine():
    process = _sleeper()
    try:
        create_time = psutil.Process(process.pid).create_time()
        # the same pid, started at another time: a reused pid is someone else
        assert HeldExitWatch.open(_record(process.pid, create_time - 100)) is None
        assert HeldExitWatch.open(_record(process.pid, 0, runtime="container")) is None
        assert HeldExitWatch.open(None) is None
    finally:
        process.kill()
        process.wait()
    assert HeldExitWatch.open(_record(process.pid, create_time)) is None, "gone already"


async def test_closing_a_watch_that_still_waits_leaves_nothing_registered():
    process = _sleeper()
    try:
        watch = HeldExitWatch.open(_record(process.pid, psutil.Process(process.pid).create_time()))
        waiting = asyncio.create_task(watch.wait(30))
        await asyncio.sleep(0.05)
        waiting.cancel()  # a stop cancels supervise in the middle of its wait
        await asyncio.gather(waiting, return_exceptions=True)
        fd = watch._fd
        watch.close()
        assert asyncio.get_running_loop().remove_reader(fd) is False, "no reader left on the loop"
        with pytest.raises(OSError):
            os.fstat(fd)  # and the pidfd is closed
    finally:
        process.kill()
        process.wait()


async def test_without_pidfd_as_on_macos_the_wait_polls_instead_of_returning_at_once(monkeypatch):
    """macOS has no os.pidfd_open: the wait must still last until the timeout (a readiness or
    supervise loop would otherwise spin) and still see the exit."""
    monkeypatch.delattr(os, "pidfd_open")
    process = _sleeper()
    try:
        create_time = psutil.Process(process.pid).create_time()
        assert HeldExitWatch.open(_record(process.pid, create_time)) is None
        started = time.monotonic()
        assert await wait_for_exit(process.pid, create_time, 0.3) is False
        assert time.monotonic() - started >= 0.29, "waited, not returned at once"
        process.send_signal(signal.SIGKILL)
        process.wait()
        started = time.monotonic()
        assert await wait_for_exit(process.pid, create_time, 10) is True
        assert time.monotonic() - started < 1
    finally:
        process.kill()
        process.wait()
