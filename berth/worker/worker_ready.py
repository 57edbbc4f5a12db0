"""How the worker tells `berth up` that it serves: a file naming its pid, written once Temporal lists
the worker as a poller of both of its task queues.

The worker holds a Temporal client anyway, so it makes the check itself; `berth up` only reads the
file and compares the pid with the worker it started (a file left by an earlier worker does not
count). So `berth up`, a process supervisor, needs no Temporal client and none of temporalio's
~50 MB of imports.
"""

import os
from pathlib import Path

from berth.common.atomic_write import write_atomically
from berth.settings import Settings

READY_FILE = "worker.ready"


def ready_path(settings: Settings) -> Path:
    return settings.home / READY_FILE


def announce_ready(settings: Settings, pid: int | None = None) -> None:
    write_atomically(ready_path(settings), f"{pid or os.getpid()}\n")


def withdraw_ready(settings: Settings) -> None:
    """The worker is going away: it no longer serves."""
    path = ready_path(settings)
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def worker_ready(settings: Settings, pid: int | None) -> bool:
    """Whether the worker with this pid said that it polls both of its queues."""
    try:
        return pid is not None and ready_path(settings).read_text().strip() == str(pid)
    except FileNotFoundError:
        return False
