"""Engines as native processes: start, find, watch and stop them, from any worker on the node.

Each engine runs under a tiny /bin/sh wrapper that is the leader of a new session and process
group, and that writes the engine's exit status to a file when it ends. So the status is known
even when the worker that started the engine has died and another one supervises it, and one
killpg stops the engine and anything it forked.
"""

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from berth.engines.base import LaunchCommand

INSTANCE_MARKER = "BERTH_INSTANCE_ID"
# $0 is the exit file, "$@" the engine's argv. `$?` is 128+N when the engine died of signal N.
_WRAPPER = '"$@"; echo $? > "$0"'

# Popen objects of engines this worker started, so their wrappers are reaped, not left as zombies.
_children: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class StartedProcess:
    wrapper_pid: int
    pid: int
    pid_create_time: float
    log_offset: int


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int | None  # None: unknown (the wrapper itself was killed)
    signal: int | None

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by signal {self.signal} ({name})"
        if self.exit_code is None:
            return "gone (exit status unknown)"
        return f"exited with status {self.exit_code}"


def start(command: LaunchCommand, instance_id: str, log_path: Path, exit_file: Path) -> StartedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    exit_file.unlink(missing_ok=True)
    env = {**os.environ, **command.env, INSTANCE_MARKER: instance_id}
    with open(log_path, "ab") as log:
        log_offset = log.tell()
        log.write(f"=== berth: starting {' '.join(command.argv)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            ["/bin/sh", "-c", _WRAPPER, str(exit_file), *command.argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _children[popen.pid] = popen
    engine = _engine_child(popen.pid)
    return StartedProcess(popen.pid, engine.pid, engine.create_time(), log_offset)


def _engine_child(wrapper_pid: int, wait_s: float = 2.0) -> psutil.Process:
    """The engine is the wrapper's one child; if the wrapper ended already, stand in with it."""
    wrapper = psutil.Process(wrapper_pid)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            children = wrapper.children()
            if children:
                return children[0]
            if wrapper.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.002)
    return wrapper


def is_alive(pid: int, create_time: float) -> bool:
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > 0.05:
            return False  # the pid was reused by another process
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reap(wrapper_pid: int) -> None:
    popen = _children.get(wrapper_pid)
    if popen is not None and popen.poll() is not None:
        del _children[wrapper_pid]


def wait_exit_status(exit_file: Path, wrapper_pid: int, timeout_s: float = 1.0) -> ExitStatus:
    """The engine just ended: give its wrapper the moment it needs to write the exit status."""
    deadline = time.monotonic() + timeout_s
    while not exit_file.exists() and time.monotonic() < deadline:
        reap(wrapper_pid)
        try:
            if psutil.Process(wrapper_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.002)
    reap(wrapper_pid)
    return exit_status(exit_file)


def exit_status(exit_file: Path) -> ExitStatus:
    try:
        code = int(exit_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return ExitStatus(None, None)
    if 128 < code <= 128 + 64:
        return ExitStatus(code, code - 128)
    return ExitStatus(code, None)


def group_members(wrapper_pid: int) -> list[psutil.Process]:
    """Live processes of the engine's process group (its pgid is the wrapper's pid)."""
    members = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == wrapper_pid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def stop_group(wrapper_pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the whole group, SIGKILL what is left after the grace period. Idempotent."""
    if wrapper_pid <= 0:
        return  # no group of ours (a container's record); killpg(0) would signal our own group
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(wrapper_pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            reap(wrapper_pid)
            if not group_members(wrapper_pid):
                reap(wrapper_pid)
                return
            time.sleep(0.05)
    reap(wrapper_pid)


def find_marked(instance_id: str) -> list[psutil.Process]:
    """Processes started for this instance, found by the marker in their environment."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get(INSTANCE_MARKER) == instance_id:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def kill_processes(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(processes, timeout=5)


def marked_processes(home: str) -> list[psutil.Process]:
    """Live processes started by berth for any instance of the node whose $BERTH_HOME is `home`."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
            if INSTANCE_MARKER in env and env.get("BERTH_HOME") == home:
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found
