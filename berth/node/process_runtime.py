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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from berth.engines.base import LaunchCommand
from berth.node.logs import open_log

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
    exit_file.unlink(missing_ok=True)
    env = {**os.environ, **command.env, INSTANCE_MARKER: instance_id}
    with open_log(log_path) as log:  # 0600: the argv is written, never the environment
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
            children = _child_pids(wrapper)
            if children:
                return psutil.Process(children[0])
            if wrapper.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.002)
    return wrapper


def _child_pids(process: psutil.Process) -> list[int]:
    """The kernel's list of a single-threaded process's children: one small read, where psutil's
    children() reads the parent of every process on the machine (over 2000 with 1000 deployments).
    psutil's way where the kernel does not keep the list (CONFIG_PROC_CHILDREN)."""
    try:
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as listed:
            return [int(pid) for pid in listed.read().split()]
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{process.pid}"):
            raise psutil.NoSuchProcess(process.pid) from None
        return [child.pid for child in process.children()]


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
    """The engine just ended: give its wrapper the moment it needs to write the exit status. The
    file exists, empty, from the moment the wrapper's `>` opened it until `echo` wrote into it: a
    status is read once it is whole, or once the wrapper has ended (all it wrote is there then)."""
    deadline = time.monotonic() + timeout_s
    while (status := exit_status(exit_file)).exit_code is None and time.monotonic() < deadline:
        reap(wrapper_pid)
        try:
            if psutil.Process(wrapper_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.002)
    reap(wrapper_pid)
    return status if status.exit_code is not None else exit_status(exit_file)


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
    if not group_exists(wrapper_pid):
        return []
    members = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == wrapper_pid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def group_exists(pgid: int) -> bool:
    """Whether any process, a zombie included, is in the group: one syscall, no scan of the machine."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(wrapper_pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the whole group, SIGKILL what is left after the grace period. Idempotent.

    The machine's process table is scanned once to learn the group's members; while waiting, only
    those are looked at (and the kernel asked whether the group is empty: killpg with signal 0),
    with one more scan to confirm when they are all gone or zombies nobody reaps (the wrappers
    of a worker that has exited). Scanning every process every 50 ms made stopping O(processes)
    per engine: stopping 50 took 9-18 s."""
    if wrapper_pid <= 0:
        return  # no group of ours (a container's record); killpg(0) would signal our own group
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(wrapper_pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        members = group_members(wrapper_pid)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            reap(wrapper_pid)
            if not group_exists(wrapper_pid):
                return
            if all(_ended(member) for member in members):
                members = group_members(wrapper_pid)
                if not members:
                    reap(wrapper_pid)
                    return
            time.sleep(0.02)
    reap(wrapper_pid)


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def find_marked(instance_id: str) -> list[psutil.Process]:
    """Processes started for this instance, found by the marker in their environment."""
    marker = _MARKER_PREFIX + instance_id.encode()
    return [process for process, env in _marked_environments() if marker in env]


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
    home_entry = f"BERTH_HOME={home}".encode()
    found = []
    for process, env in _marked_environments():
        if home_entry in env:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except psutil.Error:
                continue
    return found


def instance_of(process: psutil.Process) -> str | None:
    """The instance a marked process was started for."""
    try:
        return process.environ().get(INSTANCE_MARKER)
    except (psutil.Error, OSError):
        return None


_MARKER_PREFIX = f"{INSTANCE_MARKER}=".encode()


def _marked_environments() -> Iterator[tuple[psutil.Process, set[bytes]]]:
    """Every process of the machine that carries an instance marker, with its environment as a
    set of raw `NAME=value` entries.

    On Linux straight from /proc/PID/environ: bytes, no decoding into a dict, and unmarked
    processes skipped by one substring test (~5x cheaper than psutil's environ(), which matters
    because every process of the machine is looked at). Elsewhere (macOS) through psutil."""
    if not os.path.isdir("/proc/self"):
        for process in psutil.process_iter(["pid"]):
            try:
                env = process.environ()
            except (psutil.Error, OSError):
                continue
            if INSTANCE_MARKER in env:
                yield process, {f"{name}={value}".encode() for name, value in env.items()}
        return
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                raw = handle.read()
        except OSError:
            continue
        if _MARKER_PREFIX not in raw:
            continue
        try:
            process = psutil.Process(int(name))
        except psutil.Error:
            continue
        yield process, set(raw.split(b"\0"))
