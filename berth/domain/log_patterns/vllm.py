"""Failure lines of vLLM (and its KV-cache arithmetic), and the context size it says would fit."""

import re

from berth.domain.log_patterns.base import LOAD, OOM, LogPattern, pattern as _p

PATTERNS: tuple[LogPattern, ...] = (
    _p(
        OOM,
        r"No available memory for the cache blocks",
        90,
        "vLLM: no GPU memory left for the KV cache",
    ),
    _p(
        OOM,
        r"larger than the maximum number of tokens that can be stored in KV cache"
        r"|larger than the available KV cache memory",
        90,
        "vLLM: the context does not fit in the KV cache",
    ),
    _p(
        LOAD,
        r"Model architectures? \[.*\] (?:are|is) not supported|Model type \S+ not supported",
        55,
        "the engine does not support this model architecture",
    ),
)

# The context size vLLM says would fit, when the KV cache is too small for the one asked.
CONTEXT_HINTS = (
    # vLLM V1: "... Based on the available memory, the estimated maximum model length is 20976."
    re.compile(r"estimated maximum model length is (\d+)", re.IGNORECASE),
    # vLLM V0: "... the maximum number of tokens that can be stored in KV cache (3664)."
    re.compile(r"maximum number of tokens that can be stored in KV cache \((\d+)\)", re.IGNORECASE),
)
