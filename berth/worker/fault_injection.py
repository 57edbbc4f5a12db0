"""Failpoints for the tests that break things on purpose: SIGKILL the worker at a chosen step.

Off unless the worker runs with BERTH_FAULT_INJECTION=1. Then, before each activity starts and
after it returns (before its result reaches Temporal), the worker looks for the file
$BERTH_HOME/faults/kill-worker; if it names this point (`start:<activity>` or
`end:<activity>`), the file is removed and the worker kills itself with SIGKILL, as a crash would.
"""

import os
import signal
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

FAULT_FILE = "faults/kill-worker"


def enabled() -> bool:
    return os.environ.get("BERTH_FAULT_INJECTION") == "1"


class _KillAtStep(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, fault_file: Path):
        super().__init__(next)
        self.fault_file = fault_file

    def _maybe_die(self, point: str) -> None:
        try:
            wanted = self.fault_file.read_text().strip()
        except FileNotFoundError:
            return
        if wanted == point:
            self.fault_file.unlink(missing_ok=True)
            os.kill(os.getpid(), signal.SIGKILL)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        self._maybe_die(f"start:{name}")
        result = await super().execute_activity(input)
        self._maybe_die(f"end:{name}")
        return result


class KillWorkerInterceptor(Interceptor):
    def __init__(self, home: Path):
        self.fault_file = home / FAULT_FILE

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _KillAtStep(next, self.fault_file)
