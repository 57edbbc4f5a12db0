"""Engines as processes: the wrapper records exit status, stop reaches the whole group."""

import os
import signal
import subprocess
import sys
import time

from berth.node import process_runtime
from berth.engines.base import LaunchCommand


def run(tmp_path, code: str, instance: str = "t-1"):
    command = LaunchCommand([sys.executable, "-c", code])
    return process_runtime.start(command, instance, tmp_path / "log", tmp_path / "exit")


def test_exit_code_and_output_are_recorded(tmp_path):
    started = run(tmp_path, "print('hello from the engine'); raise SystemExit(3)")
    assert started.pid != started.wrapper_pid
    status = _wait_status(tmp_path)
    assert (status.exit_code, status.signal) == (3, None)
    assert "hello from the engine" in (tmp_path / "log").read_text()
    assert status.describe() == "exited with status 3"


def test_a_kill_9_is_recorded_as_signal_9(tmp_path):
    started = run(tmp_path, "import time; time.sleep(60)")
    os.kill(started.pid, signal.SIGKILL)
    status = _wait_status(tmp_path)
    assert status.signal == 9 and "SIGKILL" in status.describe()


def test_stop_group_ends_the_engine_and_its_children(tmp_path):
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    started = run(tmp_path, code, "t-2")
    # the wrapper, the engine and the engine's own child, once the engine has started it
    assert _eventually(lambda: len(process_runtime.group_members(started.wrapper_pid)) >= 3)
    assert {p.pid for p in process_runtime.find_marked("t-2")} >= {started.pid, started.wrapper_pid}
    process_runtime.stop_group(started.wrapper_pid, grace_s=5)
    assert not process_runtime.group_members(started.wrapper_pid)
    assert not process_runtime.is_alive(started.pid, started.pid_create_time)


def test_a_reused_pid_is_not_mistaken_for_the_engine(tmp_path):
    started = run(tmp_path, "import time; time.sleep(60)", "t-3")
    try:
        assert process_runtime.is_alive(started.pid, started.pid_create_time)
        assert not process_runtime.is_alive(started.pid, started.pid_create_time - 100)
    finally:
        process_runtime.stop_group(started.wrapper_pid, grace_s=1)


def _eventually(condition, timeout_s=10.0) -> bool:
    """Poll `condition` until it holds or the deadline passes; its last answer."""
    deadline = time.monotonic() + timeout_s
    while not (held := condition()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return held


def _wait_status(tmp_path, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while True:
        status = process_runtime.exit_status(tmp_path / "exit")
        if status.exit_code is not None or time.monotonic() > deadline:
            return status
        time.sleep(0.01)


def test_stop_instance_finds_unrecorded_leftovers_only_when_asked(tmp_path):
    """A launch's first attempt with no record skips the look through every process (there can be
    no leftover); a retried launch, and stop_engine, still find a process nobody recorded."""
    from berth.node.engine_records import EngineRecords
    from berth.node.engine_launch import stop_instance

    records = EngineRecords(tmp_path / "run")
    started = run(tmp_path, "import time; time.sleep(60)", "t-4")
    try:
        stop_instance(records, "t-4", grace_s=1, containers=False, unrecorded=False)
        assert process_runtime.is_alive(started.pid, started.pid_create_time), "not looked for"
        stop_instance(records, "t-4", grace_s=1, containers=False)
        assert _eventually(lambda: not process_runtime.is_alive(started.pid, started.pid_create_time)), (
            "found by its marker and killed"
        )
    finally:
        process_runtime.stop_group(started.wrapper_pid, grace_s=1)


def test_an_exit_file_opened_but_not_yet_written_is_waited_for(tmp_path):
    """The wrapper's `echo $? > file` makes the file, empty, before it writes: read then, a kill -9
    was reported "stopped without an exit status" (seen under load). The status is read once whole."""
    exit_file = tmp_path / "exit"
    exit_file.touch()  # opened by the shell's redirection, nothing written yet
    writer = subprocess.Popen(["/bin/sh", "-c", 'sleep 0.3; echo 137 > "$0"', str(exit_file)])
    try:
        started = time.monotonic()
        status = process_runtime.wait_exit_status(exit_file, writer.pid, timeout_s=5)
        assert (status.exit_code, status.signal) == (137, 9), status
        assert time.monotonic() - started >= 0.25
    finally:
        writer.wait(5)
