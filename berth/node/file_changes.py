"""Being told when a file is written to (Linux inotify, through libc), instead of looking every few ms.

await_ready wakes when the loading engine writes to its log. Looking at the log's size every 10 ms
cost the worker 39-50 ms of CPU per 2 s of loading (200 looks, each a wake-up of the event loop and
a stat; measured twice on a quiet log), ~2% of a core per deployment being loaded, taken from the
engine itself while it loads (llama.cpp's load runs more than one thread on 2 cores) and from every
other loading deployment (50 at once: ~a core's worth). With inotify the kernel says when the file
changed: nothing is done while the engine is quiet. Where there is no inotify (macOS), or no
instance left (the kernel allows a user 128 by default: fs.inotify.max_user_instances; one per
deployment being loaded), `open` gives None and the caller looks.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from pathlib import Path

IN_MODIFY = 0x00000002
_READ_BYTES = 4096

_libc: ctypes.CDLL | None | bool = None


def _inotify_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.inotify_init1, lib.inotify_add_watch  # noqa: B018 - present, or AttributeError
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


class FileChanges:
    """Writes to one file, as a future that is done once the file has been written to since the
    last `wait`."""

    def __init__(self, fd: int):
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._changed = self._loop.create_future()
        self._loop.add_reader(fd, self._on_events)

    @classmethod
    def open(cls, path: str | Path) -> "FileChanges | None":
        """None where inotify is missing (not Linux) or the file cannot be watched (gone)."""
        libc = _inotify_libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(str(path)), IN_MODIFY) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def _on_events(self) -> None:
        try:
            while os.read(self._fd, _READ_BYTES):
                pass
        except BlockingIOError:
            pass
        if not self._changed.done():
            self._changed.set_result(True)

    async def wait(self, timeout_s: float, also: asyncio.Future | None = None) -> bool:
        """Until the file is written to (or was, since the last wait), `also` is done, or timeout_s
        passes. True when the file was written to."""
        if not self._changed.done():
            waiting = {self._changed} if also is None else {self._changed, also}
            await asyncio.wait(waiting, timeout=max(0.0, timeout_s), return_when=asyncio.FIRST_COMPLETED)
        changed = self._changed.done()
        if changed:
            self._changed = self._loop.create_future()
        return changed

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
