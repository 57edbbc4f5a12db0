"""Looking at a launched engine from any worker on its node: alive or not, and if not, why.

The engine's record says where it runs: a native process (its pid, the exit file its wrapper
writes, the deployment's log file) or a Docker container (Docker's State, with ExitCode and
OOMKilled, and the container's own output). Both feed the same log classifier.
"""

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from berth.domain.diagnostics import classify_exit, classify_log
from berth.domain.errors import ErrorCode, Failure
from berth.domain.hardware import Hardware
from berth.domain.pipeline import EngineHandle
from berth.engines.registry import get_engine
from berth.node import container_runtime, process_runtime
from berth.node.engine_records import EngineRecord, EngineRecords
from berth.node.hardware import probe_hardware
from berth.node.logs import read_lines_since
from berth.settings import Settings

CONTAINER_POLL_S = 1.0  # a container's exit is noticed by asking Docker this often
PROCESS_POLL_S = 0.25  # without pidfd (macOS), a process's exit is noticed by asking this often


def record_alive(record: EngineRecord) -> bool:
    if record.runtime == "container":
        return record.container_id is not None and container_runtime.is_alive(record.container_id)
    return process_runtime.is_alive(record.pid, record.pid_create_time)


@dataclass
class EngineView:
    """The engine behind a handle, as this node sees it now."""

    handle: EngineHandle
    record: EngineRecord | None

    @classmethod
    def of(cls, handle: EngineHandle, records: EngineRecords | None = None) -> "EngineView":
        record = (records or EngineRecords(Settings.from_env().run_dir)).get(handle.instance_id)
        if record is not None and (record.pid != handle.pid or record.container_id != handle.container_id):
            record = None  # the record is of another launch
        return cls(handle, record)

    @property
    def in_container(self) -> bool:
        return self.record is not None and self.record.runtime == "container"

    @property
    def stopped_by_shutdown(self) -> bool:
        return self.record is not None and self.record.stopped_by_shutdown

    def alive(self, watch: "HeldExitWatch | None" = None) -> bool:
        """With the engine's held watch: its pidfd says, not /proc."""
        if watch is not None:
            return self.record is not None and not watch.exited()
        return self.record is not None and record_alive(self.record)

    def log_lines(self, max_lines: int = 200) -> list[str]:
        if self.in_container:
            lines = container_runtime.log_lines(self.record.container_id, max_lines)
            if lines is not None:
                return lines
        return read_lines_since(Path(self.handle.log_path), self.handle.log_offset, max_lines)

    def exit_failure(self) -> Failure:
        """Why the engine is gone: its exit status and its own log lines, classified."""
        return with_gpu_driver(self._exit_failure())

    def _exit_failure(self) -> Failure:
        if self.record is None:
            return Failure(
                code=ErrorCode.CONTAINER_EXITED,
                message="the engine's record is gone from the node: it was stopped outside berth",
            )
        engine = get_engine(self.handle.engine)
        if self.in_container:
            status = container_runtime.exit_status(self.record.container_id)
            if status.exit_code is None:
                return Failure(
                    code=ErrorCode.CONTAINER_EXITED,
                    message="the engine's container is gone: it was removed outside berth",
                    log_lines=self.log_lines(20),
                )
            lines = self.log_lines()
            if status.error:  # Docker's own words, e.g. the GPU runtime failing to start it
                lines.append(f"docker: {status.error}")
            return classify_exit(
                lines, status.exit_code, None, oom_killed=status.oom_killed, extra_patterns=engine.log_patterns
            )
        status = process_runtime.wait_exit_status(Path(self.record.exit_file), self.record.wrapper_pid)
        return classify_exit(
            self.log_lines(),
            status.exit_code,
            status.signal,
            extra_patterns=engine.log_patterns,
        )

    def unhealthy_failure(self, message: str) -> Failure:
        """The engine runs, but its health check says it is broken: what its log says why."""
        lines = self.log_lines(50)
        diagnosis = classify_log(lines, get_engine(self.handle.engine).log_patterns)
        if diagnosis is not None:
            return with_gpu_driver(Failure(
                code=diagnosis.code,
                message=f"{message}: {diagnosis.primary.text.strip()}",
                log_lines=[match.text for match in diagnosis.matched],
            ))
        return Failure(code=ErrorCode.RUNTIME_ERROR, message=message, log_lines=lines[-20:])

    async def wait_for_exit(self, timeout_s: float, watch: "HeldExitWatch | None" = None) -> bool:
        """True as soon as the engine is seen gone, False after timeout_s if it still runs (through
        the engine's held watch when given one)."""
        if self.record is None:
            return True
        if watch is not None:
            return await watch.wait(timeout_s)
        if not self.in_container:
            return await wait_for_exit(self.record.pid, self.record.pid_create_time, timeout_s)
        return await _poll_until_gone(self.alive, timeout_s, CONTAINER_POLL_S)


async def wait_for_exit(pid: int, create_time: float, timeout_s: float) -> bool:
    """True as soon as the process ends, False after timeout_s if it still runs: through a pidfd (no
    polling), or where there is none (macOS) by asking every PROCESS_POLL_S."""
    watch = HeldExitWatch.of_process(pid, create_time)
    if watch is None:
        return await _poll_until_gone(lambda: process_runtime.is_alive(pid, create_time), timeout_s, PROCESS_POLL_S)
    try:
        return await watch.wait(timeout_s)
    finally:
        watch.close()


async def _poll_until_gone(alive, timeout_s: float, poll_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(poll_s, remaining))
        if not alive():
            return True
    return False


class HeldExitWatch:
    """A native engine's exit, watched through one pidfd held for as long as the watch lasts.

    supervise looks at its engine every few seconds for as long as it serves; asking psutil each
    time (and opening a pidfd per wait) read /proc three times per look: with ~600 engines, ~10% of
    the worker's busy time. The pidfd is opened once, checked against the process's create time (a
    reused pid is not ours), and is readable from the moment the process exits."""

    def __init__(self, fd: int):
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._loop.add_reader(fd, self._on_exit)

    def _on_exit(self) -> None:
        if not self._exited.done():
            self._exited.set_result(True)
        self._loop.remove_reader(self._fd)

    @classmethod
    def open(cls, record: EngineRecord | None) -> "HeldExitWatch | None":
        """None for a container, or where of_process gives none: the caller then asks EngineView."""
        if record is None or record.runtime == "container":
            return None
        return cls.of_process(record.pid, record.pid_create_time)

    @classmethod
    def of_process(cls, pid: int, create_time: float) -> "HeldExitWatch | None":
        """None for a process already gone (or a reused pid), or a system without pidfd (macOS)."""
        if not hasattr(os, "pidfd_open"):
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if not process_runtime.is_alive(pid, create_time):
            os.close(fd)
            return None
        return cls(fd)

    def exited(self) -> bool:
        return self._exited.done()

    @property
    def exit(self) -> asyncio.Future:
        """Done when the process has exited (wait on it beside other things; never cancel it)."""
        return self._exited

    async def wait(self, timeout_s: float) -> bool:
        """True as soon as the process has exited, False after timeout_s if it still runs."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), timeout_s)
        return self._exited.done()

    def close(self) -> None:
        if not self._exited.done():
            self._loop.remove_reader(self._fd)
            self._exited.cancel()
        os.close(self._fd)


def with_gpu_driver(failure: Failure, hardware: Hardware | None = None) -> Failure:
    """A CUDA_ERROR carries this node's NVIDIA driver and CUDA versions, which its guidance names
    (the probe is cached: no NVML call per failure). Any other failure, or a node whose probe saw no
    driver, is returned as it is."""
    if failure.code is not ErrorCode.CUDA_ERROR:
        return failure
    hardware = hardware or probe_hardware()
    if not (hardware.driver_version or hardware.cuda_version):
        return failure
    return failure.model_copy(update={"driver_version": hardware.driver_version, "cuda_version": hardware.cuda_version})
