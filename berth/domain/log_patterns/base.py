"""A log pattern: one recognisable failure line, the ErrorCode it proves, how specific that proof is."""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.domain.errors import ErrorCode

OOM = ErrorCode.OOM
CUDA = ErrorCode.CUDA_ERROR
LOAD = ErrorCode.MODEL_LOADING_FAILURE
RUNTIME = ErrorCode.RUNTIME_ERROR


@dataclass(frozen=True)
class LogPattern:
    """One recognisable failure line: the code it proves, how specific that proof is."""

    code: ErrorCode
    regex: re.Pattern[str]
    specificity: int
    description: str

    def matches(self, line: str) -> bool:
        return self.regex.search(line) is not None


def pattern(code: ErrorCode, regex: str, specificity: int, description: str, flags: int = re.IGNORECASE) -> LogPattern:
    """A table entry; case-insensitive unless `flags` says otherwise."""
    return LogPattern(code, re.compile(regex, flags), specificity, description)
