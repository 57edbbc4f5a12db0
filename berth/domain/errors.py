"""Failure codes, and the evidence a failure carries."""

from enum import Enum

from pydantic import BaseModel, Field


class ErrorCode(str, Enum):
    OOM = "OOM"
    CUDA_ERROR = "CUDA_ERROR"
    MODEL_LOADING_FAILURE = "MODEL_LOADING_FAILURE"
    CONTAINER_EXITED = "CONTAINER_EXITED"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    STARTUP_TIMEOUT = "STARTUP_TIMEOUT"
    MUST_REDOWNLOAD = "MUST_REDOWNLOAD"
    ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"  # no engine here serves this model (or the forced one can't run)
    NODE_MISCONFIGURED = "NODE_MISCONFIGURED"  # the node lacks what it needs to serve safely (no cluster token)
    TRANSIENT = "TRANSIENT"  # a fault with no more specific code (a node that went away, ...)


class Failure(BaseModel):
    """What went wrong, as evidence: the code, a one-line message, and the log lines that prove it."""

    code: ErrorCode
    message: str
    log_lines: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    signal: int | None = None
    # The largest context size that fits, where the failure is an OOM and it is known.
    suggested_context_size: int | None = None
    # MUST_REDOWNLOAD: the files berth had fetched that are gone
    missing_files: list[str] = Field(default_factory=list)
    # CUDA_ERROR: the node's NVIDIA driver and the CUDA version it supports (its guidance names them)
    driver_version: str | None = None
    cuda_version: str | None = None
