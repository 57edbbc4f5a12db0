"""A deployment's engine log as the API answers it: the last lines, and those that match a
known failure pattern (berth.domain.diagnostics)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from pydantic import BaseModel, Field

from berth.api.facade.errors import Unavailable
from berth.domain.diagnostics import mark_lines
from berth.domain.errors import ErrorCode
from berth.engines.registry import ENGINES

MAX_TAIL = 10_000


class LogIssue(BaseModel):
    """A log line that matched a failure pattern."""

    line: int = Field(description="0-based index into `lines`")
    text: str
    code: ErrorCode
    description: str


class DeploymentLogs(BaseModel):
    name: str
    path: str | None = Field(description="the engine log on its node; None before the first launch")
    lines: list[str]
    issues: list[LogIssue] = Field(description="the lines that match a known failure pattern")
    offset: int = Field(description="byte offset after the last line: pass it back to read only newer lines")
    instance: str | None = Field(None, description="whose log this is; None: every instance's, each line tagged")
    instances: list[str] = Field(default_factory=list, description="the deployment's instances")


def marked_logs(
    name: str, path: str | None, engine: str | None, lines: list[str], offset: int, **more
) -> DeploymentLogs:
    """The answer: `lines` with the issues the engine's patterns (and the common ones) find in them."""
    registered = ENGINES.get(engine or "")
    marked = mark_lines(lines, registered.log_patterns if registered else ())
    return DeploymentLogs(
        name=name,
        path=path,
        lines=lines,
        issues=[LogIssue(line=m.index, text=m.text, code=m.code, description=m.description) for m in marked],
        offset=offset,
        **more,
    )


def read_log(path: str | None, tail: int, offset: int) -> tuple[list[str], int]:
    """The last `tail` whole lines at or after byte `offset`, and the offset after them.

    A half-written last line is left for the next read; a file shorter than `offset` (replaced)
    is read from its start.
    """
    if path is None:
        return [], 0
    try:
        with open(Path(path), "rb") as handle:
            size = handle.seek(0, 2)
            start = offset if offset <= size else 0
            handle.seek(start)
            lines: deque[bytes] = deque(maxlen=tail)
            end = start
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                lines.append(raw)
                end += len(raw)
    except FileNotFoundError:
        return [], 0
    except PermissionError:
        raise Unavailable(
            f"the API may not read the engine log {path}: engine logs are private to the node's user "
            "(0600 in a 0700 folder); run the API as that user, or read the log on the node"
        ) from None
    return [line.decode("utf-8", "replace").rstrip("\r\n") for line in lines], end
