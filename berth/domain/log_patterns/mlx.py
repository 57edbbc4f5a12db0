"""Failure lines of MLX on Apple silicon (Metal): mlx-lm serving, and llama.cpp built for Metal."""

from berth.domain.log_patterns.base import OOM, LogPattern, pattern as _p

PATTERNS: tuple[LogPattern, ...] = (
    _p(
        OOM,
        r"\[metal::malloc\] Attempting to allocate .*greater than the maximum allowed buffer size",
        90,
        "Metal: allocation larger than the maximum buffer size",
    ),
    _p(
        OOM,
        r"Insufficient Memory \(\w*:?kIOGPUCommandBufferCallbackErrorOutOfMemory\)"
        r"|kIOGPUCommandBufferCallbackErrorOutOfMemory",
        90,
        "Metal: GPU command buffer ran out of memory",
    ),
    _p(OOM, r"\[metal::malloc\] Resource limit \(\d+\) exceeded", 85, "Metal: resource limit exceeded"),
)
