"""The log pattern tables, one module per engine plus the lines any engine may print.

Every engine's log is read against all of them (llama.cpp built for Metal prints Metal's lines,
vLLM prints PyTorch's and CUDA's), plus the patterns its own Engine class adds (`log_patterns`).
The specificity ladder, from most to least specific:

    OOM (90..80) > CUDA_ERROR (70..60) > MODEL_LOADING_FAILURE (55..40) > RUNTIME_ERROR (20..10)

Among equally specific patterns that match one line, the first in `ALL_PATTERNS` names it: an
engine's table before the common one. The classification itself is berth.domain.diagnostics.
"""

from berth.domain.log_patterns import common, llamacpp, mlx, vllm
from berth.domain.log_patterns.base import LogPattern

ALL_PATTERNS: tuple[LogPattern, ...] = llamacpp.PATTERNS + vllm.PATTERNS + mlx.PATTERNS + common.PATTERNS

__all__ = ["ALL_PATTERNS", "LogPattern"]
