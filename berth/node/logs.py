"""Engine logs: $BERTH_HOME/logs/<instance id>.log (an instance id is `<deployment>-<8 hex>`),
every launch of the instance appended after a header line.

Private to the node's user: files 0600 in a 0700 folder (an engine prints its arguments, paths,
sometimes what a client sent), fixed when a log made before (0644) is opened again. berth writes
the engine's argv there, never its environment: a spec's `env` values (an HF_TOKEN) stay out.
"""

import contextlib
import os
import stat
from collections import deque
from pathlib import Path
from typing import BinaryIO

LOG_MODE = 0o600
LOGS_DIR_MODE = 0o700


def open_log(path: Path) -> BinaryIO:
    """`path` opened for appending, 0600 in a folder made 0700 (both fixed if they were looser).
    A link in the log's place is not followed (OSError): a log is never written through one."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True, mode=LOGS_DIR_MODE)
    with contextlib.suppress(PermissionError):  # a folder of another user's: its mode is theirs
        if stat.S_IMODE(folder.stat().st_mode) != LOGS_DIR_MODE:
            os.chmod(folder, LOGS_DIR_MODE)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, LOG_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != LOG_MODE:
            os.fchmod(fd, LOG_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def log_path(logs_dir: Path, name: str) -> Path:
    return logs_dir / f"{name}.log"


def read_lines_since(path: Path, offset: int, max_lines: int = 200) -> list[str]:
    """The last `max_lines` lines written at or after byte `offset` (one launch's output)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            tail = deque(handle, maxlen=max_lines)
    except FileNotFoundError:
        return []
    return [line.decode("utf-8", "replace").rstrip("\r\n") for line in tail]


def tail_lines(path: Path, count: int) -> list[str]:
    return read_lines_since(path, 0, count)
