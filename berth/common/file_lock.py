"""An exclusive flock on a lock file, waited for without blocking the event loop: one download or
copy of a model at a time, across the worker's activities and across processes."""

import asyncio
import fcntl
import os
from pathlib import Path

LOCK_POLL_S = 0.2


class ExclusiveLock:
    def __init__(self, path: Path):
        self._path = path
        self._fd: int | None = None

    async def __aenter__(self) -> None:
        fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                try:
                    await asyncio.sleep(LOCK_POLL_S)
                except BaseException:
                    os.close(fd)
                    raise
        self._fd = fd

    async def __aexit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
