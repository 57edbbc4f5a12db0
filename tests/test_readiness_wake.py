"""await_ready's wait between probes: woken by the engine's log (inotify, or its size looked at) or its
exit, on real processes."""

import asyncio
import subprocess
import sys
import time

import psutil
import pytest

from berth.node import readiness
from berth.node.engine_watch import HeldExitWatch
from berth.node.file_changes import FileChanges
from berth.node.readiness import LogGrowth, until_next_probe

# Writes one line to its log after a moment, then waits to be killed.
LOGS_LATER = "import sys, time; time.sleep(0.3); open(sys.argv[1], 'a').write('serving\\n'); time.sleep(60)"


@pytest.fixture
def engine_log(tmp_path):
    path = tmp_path / "engine.log"
    path.write_text("loading\n")
    return path


def _count_looks(log: LogGrowth, watch: HeldExitWatch) -> list[str]:
    """Every look the wait takes at the log's size or the engine's exit, in order (what costs the
    worker CPU while an engine loads): a relative measure, where CPU seconds depend on the machine."""
    looks: list[str] = []
    grew, exited = log.grew, watch.exited
    log.grew = lambda: looks.append("log size") or grew()
    watch.exited = lambda: looks.append("exit") or exited()
    return looks


def _start(script: str, *args: str) -> tuple[subprocess.Popen, HeldExitWatch]:
    process = subprocess.Popen([sys.executable, "-c", script, *args])
    watch = HeldExitWatch.of_process(process.pid, psutil.Process(process.pid).create_time())
    assert watch is not None
    return process, watch


async def test_a_new_log_line_brings_the_probe_forward(engine_log, monkeypatch):
    monkeypatch.setattr(readiness, "QUIET_POLL_S", 30.0)
    process, watch = _start(LOGS_LATER, str(engine_log))
    try:
        log = LogGrowth(engine_log)
        started = time.monotonic()
        await until_next_probe(None, watch, log, budget_s=60)
        assert time.monotonic() - started < 15, "the line woke the wait, not the 30 s poll"
        assert engine_log.read_text().endswith("serving\n")
        assert not log.grew(), "the growth was taken by the wait"
    finally:
        watch.close()
        process.kill()
        process.wait()


async def test_an_exit_ends_the_wait_and_a_quiet_log_waits_out_the_poll(engine_log, monkeypatch):
    process, watch = _start("import time; time.sleep(60)")
    try:
        log = LogGrowth(engine_log)
        started = time.monotonic()
        await until_next_probe(None, watch, log, budget_s=60)
        assert time.monotonic() - started >= readiness.QUIET_POLL_S - 0.01, "nothing happened: a full poll"
        started = time.monotonic()
        await until_next_probe(None, watch, log, budget_s=0.05)
        assert time.monotonic() - started < readiness.QUIET_POLL_S, "never past the budget"

        monkeypatch.setattr(readiness, "QUIET_POLL_S", 30.0)
        process.kill()
        started = time.monotonic()
        await until_next_probe(None, watch, log, budget_s=60)
        assert time.monotonic() - started < 15, "the exit woke the wait"
        assert watch.exited()
    finally:
        watch.close()
        process.kill()
        process.wait()


def test_log_growth_sees_a_log_that_appears_grows_or_is_replaced(tmp_path):
    path = tmp_path / "later.log"
    log = LogGrowth(path)
    assert not log.grew(), "no log yet, and still none"
    path.write_text("first line\n")
    assert log.grew() and not log.grew()
    with path.open("a") as file:
        file.write("second\n")
    assert log.grew() and not log.grew()
    path.write_text("x\n")  # rotated: shorter than before
    assert log.grew()


async def test_with_inotify_a_log_line_or_an_exit_wakes_the_wait_and_a_quiet_log_costs_nothing(engine_log, monkeypatch):
    """The same wait on the kernel's word (inotify): woken by the line, by the exit, and while the
    log is quiet the worker does nothing until the poll is due."""
    changes = FileChanges.open(engine_log)
    assert changes is not None, "Linux has inotify"
    process, watch = _start(LOGS_LATER, str(engine_log))
    try:
        log = LogGrowth(engine_log)
        looks = _count_looks(log, watch)
        started = time.monotonic()
        await until_next_probe(None, watch, log, 0.2, changes)
        assert time.monotonic() - started >= 0.19, "nothing happened yet: the whole poll"
        assert looks == [], "and no looking meanwhile"

        monkeypatch.setattr(readiness, "QUIET_POLL_S", 30.0)
        await until_next_probe(None, watch, log, 60, changes)
        assert time.monotonic() - started < 15, "the line woke the wait"
        assert engine_log.read_text().endswith("serving\n") and not log.grew(), "the growth was taken"

        process.kill()
        started = time.monotonic()
        await until_next_probe(None, watch, log, 60, changes)
        assert time.monotonic() - started < 15 and watch.exited(), "the exit woke the wait"
    finally:
        changes.close()
        watch.close()
        process.kill()
        process.wait()


async def test_a_quiet_log_is_looked_at_only_without_inotify(engine_log):
    """The same quiet 0.2 s, measured in looks: with inotify none; without, the log's size every
    LOG_CHECK_S (so a count of none is not for want of a way to see looks)."""
    process, watch = _start("import time; time.sleep(60)")
    changes = FileChanges.open(engine_log)
    try:
        log = LogGrowth(engine_log)
        looks = _count_looks(log, watch)
        await until_next_probe(None, watch, log, 0.2, changes)
        assert looks == []
        await until_next_probe(None, watch, log, 0.2)
        assert "log size" in looks, looks
    finally:
        changes.close()
        watch.close()
        process.kill()
        process.wait()


async def test_file_changes_remember_a_write_until_the_next_wait(tmp_path):
    path = tmp_path / "engine.log"
    path.write_text("")
    changes = FileChanges.open(path)
    try:
        assert not await changes.wait(0.05), "nothing written"
        with open(path, "a") as log:
            log.write("a line\n")
        await asyncio.sleep(0.05)  # the event arrives while nobody waits
        assert await changes.wait(5), "remembered for the next wait"
        assert not await changes.wait(0.05), "and taken by it"
    finally:
        changes.close()
    assert FileChanges.open(tmp_path / "missing.log") is None
