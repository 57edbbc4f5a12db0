"""Failure lines of llama.cpp (ggml, GGUF), as xllamacpp's embedded server prints them."""

from berth.domain.log_patterns.base import CUDA, LOAD, OOM, RUNTIME, LogPattern, pattern as _p

PATTERNS: tuple[LogPattern, ...] = (
    _p(
        OOM,
        r"(?:failed|unable) to allocate\b.*\bbuffers?\b",
        85,
        "ggml could not allocate a buffer (weights, KV cache or compute)",
    ),
    _p(
        OOM,
        r"failed to (?:create|initialize) (?:the )?context\b.*\b(?:alloc\w*|memory)\b",
        85,
        "llama.cpp could not create its context for lack of memory",
    ),
    _p(
        CUDA,
        r"ggml_cuda_init: failed to initialize CUDA",
        45,
        "llama.cpp could not initialise CUDA (it falls back to the CPU)",
    ),
    _p(
        LOAD,
        r"invalid magic|bad magic|failed to read magic|GGUF magic invalid|unknown \(magic, version\)",
        55,
        "the file is not a valid GGUF (bad magic)",
    ),
    _p(LOAD, r"gguf_init_from_file\w*:", 55, "the GGUF file could not be read"),
    _p(
        LOAD,
        r"unknown model architecture|error loading model architecture",
        55,
        "the engine does not support this model architecture",
    ),
    _p(RUNTIME, r"GGML_ASSERT\(.*\) failed", 20, "an internal check of llama.cpp failed"),
)
