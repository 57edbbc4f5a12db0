"""Engine logs: $BERTH_HOME/logs/<instance id>.log (an instance id is `<deployment>-<8 hex>`), every
launch of the instance appended after a header line."""

from collections import deque
from pathlib import Path


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
