"""What to do about a failure, in the words a novice needs: one to three short sentences,
with the concrete numbers and names wherever the facts carry them. Pure text, no I/O."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .errors import ErrorCode

__all__ = ["GuidanceFacts", "guidance_for"]


class GuidanceFacts(BaseModel):
    """What is known about the failed deployment; every field may be missing."""

    model_config = ConfigDict(frozen=True)

    deployment: str | None = None  # the deployment's name, as `berth retry NAME` takes it
    model: str | None = None
    engine: str | None = None  # "llama.cpp", "vllm", "mlx" (any spelling of those)
    context_size: int | None = None
    suggested_context_size: int | None = None
    startup_timeout_s: float | None = None
    elapsed_s: float | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    missing_files: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    signal: int | None = None


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 or float(value).is_integer() else f"{value:.1f} s"


def _engine_kind(engine: str | None) -> str | None:
    name = (engine or "").lower().replace("_", "").replace("-", "").replace(".", "")
    if "llama" in name:
        return "llamacpp"
    if "vllm" in name:
        return "vllm"
    if "mlx" in name:
        return "mlx"
    return None


def _retry(facts: GuidanceFacts) -> str:
    return f"`berth retry {facts.deployment}`" if facts.deployment else "`berth retry <deployment>`"


def _the_model(facts: GuidanceFacts) -> str:
    return f"the model {facts.model}" if facts.model else "the model"


def _oom(facts: GuidanceFacts) -> str:
    where = f" with context size {facts.context_size}" if facts.context_size else ""
    first = f"The {_the_model(facts).removeprefix('the ')} did not fit in memory{where}."
    if facts.suggested_context_size:
        return (
            f"{first} Retry with context_size {facts.suggested_context_size}, which fits, "
            "or choose a smaller variant (a lower quantisation such as Q4_K_M, or fewer parameters)."
        )
    if facts.context_size and facts.context_size > 512:
        smaller = max(512, facts.context_size // 2)
        return (
            f"{first} Retry with a smaller context (for example context_size {smaller}) "
            "or choose a smaller variant (a lower quantisation such as Q4_K_M, or fewer parameters)."
        )
    return f"{first} Choose a smaller variant (a lower quantisation such as Q4_K_M, or fewer parameters) or a smaller context size."


def _startup_timeout(facts: GuidanceFacts) -> str:
    budget = facts.startup_timeout_s
    if facts.elapsed_s is not None and budget is not None:
        first = f"The engine was still not ready after {_seconds(facts.elapsed_s)} (the startup budget is {_seconds(budget)})."
    elif budget is not None:
        first = f"The engine was not ready within its startup budget of {_seconds(budget)}."
    elif facts.elapsed_s is not None:
        first = f"The engine was still not ready after {_seconds(facts.elapsed_s)}."
    else:
        first = "The engine was not ready within its startup budget."
    larger = f"a longer startup timeout (for example {_seconds(budget * 2)})" if budget else "a longer startup timeout"
    return (
        f"{first} Large models can take a long time to load: berth retries once as it is; "
        f"if that fails too, retry with {larger} or a smaller model."
    )


def _cuda(facts: GuidanceFacts) -> str:
    versions = [
        f"driver {facts.driver_version}" if facts.driver_version else "",
        f"CUDA {facts.cuda_version}" if facts.cuda_version else "",
    ]
    known = ", ".join(v for v in versions if v)
    first = "The GPU driver or CUDA runtime failed" + (f" ({known})" if known else "")
    docker = "vLLM runs in Docker, so also" if _engine_kind(facts.engine) == "vllm" else "For engines in Docker, also"
    return (
        f"{first}; berth retries a few times automatically. Run `nvidia-smi` on the node: if it does not "
        f"list the GPU, install or update the NVIDIA driver and reboot. {docker} check that the NVIDIA "
        "Container Toolkit is installed."
    )


_FORMATS = {
    "llamacpp": "llama.cpp needs a single GGUF file",
    "vllm": "vLLM needs a folder (or Hugging Face repository) with config.json, the tokenizer and safetensors weights",
    "mlx": "MLX needs a folder (or Hugging Face repository) of MLX safetensors weights with config.json and the tokenizer",
}
_ANY_FORMAT = "llama.cpp needs a GGUF file, vLLM and MLX need safetensors weights with config.json"


def _loading(facts: GuidanceFacts) -> str:
    missing = f" Missing: {', '.join(facts.missing_files)}." if facts.missing_files else ""
    fmt = _FORMATS.get(_engine_kind(facts.engine) or "", _ANY_FORMAT)
    return (
        f"The engine could not load {_the_model(facts)}.{missing} Check the path or repository name and "
        f"re-download the files if they may be incomplete or damaged; {fmt}."
    )


def _exited(facts: GuidanceFacts) -> str:
    if facts.signal is not None:
        how = f" (killed by signal {facts.signal})"
    elif facts.exit_code is not None:
        how = f" (exit status {facts.exit_code})"
    else:
        how = ""
    killed = facts.signal == 9 or (facts.signal is None and facts.exit_code == 137)
    cause = " Something outside berth may have killed it." if killed else ""
    return (
        f"The engine stopped{how} without a recognised error.{cause} Look at the log lines shown for the cause; "
        "berth restarts it automatically a few times before it gives up."
    )


def _runtime(facts: GuidanceFacts) -> str:
    return (
        "The engine crashed with an error; the traceback in the log lines shown says where. "
        "berth retries automatically a few times; if it keeps failing, this engine version may not "
        "support this model or these settings."
    )


def _redownload(facts: GuidanceFacts) -> str:
    files = f": {', '.join(facts.missing_files)}" if facts.missing_files else ""
    return f"The model files recorded for this node are gone{files}. Run {_retry(facts)} to download them again."


def _engine_unavailable(facts: GuidanceFacts) -> str:
    forced = f" (engine: {facts.engine})" if facts.engine else ""
    return (
        f"No engine on this node can serve {_the_model(facts)}{forced}. Check the model's format "
        "(GGUF for llama.cpp, safetensors for vLLM and MLX) and any engine override: vLLM needs Linux "
        "with an NVIDIA GPU and MLX needs a Mac with Apple silicon. Where the message names an env "
        "variable or engine flag, the node refuses it: remove it."
    )


def _node_misconfigured(facts: GuidanceFacts) -> str:
    return (
        "The node's worker lacks the cluster token, which a route across nodes needs (a peer path "
        "without it would let anyone past the API's check, so it publishes none). Give the worker the "
        "cluster's token: set BERTH_CLUSTER_TOKEN, or put it in $BERTH_HOME/cluster-token on the node "
        "(the first node's `berth up` made it there; letters, digits and ._~+/=- only); then run "
        f"{_retry(facts)}."
    )


def _transient(facts: GuidanceFacts) -> str:
    return "A temporary fault interrupted the deployment (for example a node that went away). berth retries it automatically; there is nothing to do."


_GUIDES = {
    ErrorCode.OOM: _oom,
    ErrorCode.STARTUP_TIMEOUT: _startup_timeout,
    ErrorCode.CUDA_ERROR: _cuda,
    ErrorCode.MODEL_LOADING_FAILURE: _loading,
    ErrorCode.CONTAINER_EXITED: _exited,
    ErrorCode.RUNTIME_ERROR: _runtime,
    ErrorCode.MUST_REDOWNLOAD: _redownload,
    ErrorCode.ENGINE_UNAVAILABLE: _engine_unavailable,
    ErrorCode.NODE_MISCONFIGURED: _node_misconfigured,
    ErrorCode.TRANSIENT: _transient,
}


def _fallback(code: ErrorCode) -> str:
    # For a code added to ErrorCode later and not yet given its own entry above: never raise.
    return f"The deployment failed ({code.value}). Look at the message and the log lines shown, then retry."


def guidance_for(code: ErrorCode, facts: GuidanceFacts | None = None) -> str:
    """What the user should do about a failure with this code, given what is known."""
    guide = _GUIDES.get(code)
    return guide(facts or GuidanceFacts()) if guide else _fallback(code)
