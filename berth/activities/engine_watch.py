"""Looking at a launched engine from any worker on its node: alive or not, and if not, why."""

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from berth.activities import process_runtime
from berth.activities.engine_records import EngineRecord, EngineRecords
from berth.activities.logs import read_lines_since
from berth.domain.diagnostics import classify_exit
from berth.domain.errors import ErrorCode, Failure
from berth.domain.pipeline import EngineHandle
from berth.engines.registry import get_engine
from berth.settings import Settings


@dataclass
class EngineView:
    """The engine behind a handle, as this node sees it now."""

    handle: EngineHandle
    record: EngineRecord | None

    @classmethod
    def of(cls, handle: EngineHandle) -> "EngineView":
        record = EngineRecords(Settings.from_env().run_dir).get(handle.instance_id)
        if record is not None and record.pid != handle.pid:
            record = None  # the record is of another launch
        return cls(handle, record)

    @property
    def stopped_by_shutdown(self) -> bool:
        return self.record is not None and self.record.stopped_by_shutdown

    def alive(self) -> bool:
        return self.record is not None and process_runtime.is_alive(
            self.record.pid, self.record.pid_create_time
        )

    def log_lines(self, max_lines: int = 200) -> list[str]:
        return read_lines_since(Path(self.handle.log_path), self.handle.log_offset, max_lines)

    def exit_failure(self) -> Failure:
        """Why the engine is gone: its exit status and its own log lines, classified."""
        if self.record is None:
            return Failure(
                code=ErrorCode.CONTAINER_EXITED,
                message="the engine's record is gone from the node: it was stopped outside berth",
            )
        process_runtime.reap(self.record.wrapper_pid)
        status = process_runtime.exit_status(Path(self.record.exit_file))
        engine = get_engine(self.handle.engine)
        return classify_exit(
            self.log_lines(),
            status.exit_code,
            status.signal,
            extra_patterns=engine.log_patterns,
        )


async def wait_for_exit(pid: int, create_time: float, timeout_s: float) -> bool:
    """True as soon as the process ends (pidfd: no polling), False after timeout_s if it still runs."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return not process_runtime.is_alive(pid, create_time)
    try:
        if not process_runtime.is_alive(pid, create_time):
            return True
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(True))
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), timeout_s)
        finally:
            loop.remove_reader(fd)
        return exited.done() or not process_runtime.is_alive(pid, create_time)
    finally:
        os.close(fd)
