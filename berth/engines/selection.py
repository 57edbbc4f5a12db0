"""Which engine serves a model here: a pure function of (the model's format and size, the node's
Hardware, an override). No I/O: the activity `berth.node.engine_choice` probes and calls it.

The rule, for `engine="auto"`:

    format        node                                          engine
    ------------  --------------------------------------------  -------------------------------
    gguf          anywhere llama.cpp runs (llama-server, the    llamacpp
                  xllamacpp wheel, or Docker for its image)
    safetensors   Apple silicon (Darwin arm64), mlx-lm installed  mlx
    safetensors   NVIDIA GPU(s) + Docker (or native vllm)         vllm
    safetensors   NVIDIA GPU(s), neither Docker nor vllm          refused: install Docker + the NVIDIA
                                                                  Container Toolkit or vllm, or GGUF
    safetensors   no NVIDIA GPU, not a Mac, mlx-lm installed      mlx (mlx[cpu] runs on the CPU)
    safetensors   anything else                                   refused: what to install, or GGUF
    .bin .pt .pth .onnx .h5 .ckpt .tflite, unknown               refused: convert to GGUF / safetensors

MLX is never the automatic choice on a node with an NVIDIA GPU (it would run on the CPU beside an
idle GPU); `engine="mlx"` still forces it there.

An override (`engine="llamacpp" | "vllm" | "mlx"`) always wins when it can run here, and is refused
with the reason otherwise:

    llamacpp  serves gguf; needs llama-server, xllamacpp or a Docker engine
    vllm      serves safetensors; needs an NVIDIA GPU, and Docker (vllm/vllm-openai) or native vllm
    mlx       serves safetensors; needs mlx-lm importable (Apple silicon, or mlx[cpu] on Linux)

Which formats an engine serves comes from the registry (`berth.engines.registry.ENGINES`), or from
the `engines` argument (name -> formats) that tests pass; an engine that is not registered is not
available. An engine registered without a rule below is accepted on any node that it serves the
format for, and is only chosen automatically when forced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from berth.domain.hardware import Hardware, gib

__all__ = ["EngineAssessment", "Selection", "SelectionRefused", "assess_engines", "select_engine"]

# Automatic choice, most preferred first, among engines that serve the format and can run here.
PREFERENCE = {"gguf": ("llamacpp",), "safetensors": ("vllm", "mlx")}

_CONVERT_TO_GGUF = "or convert the model to GGUF (llama.cpp's convert_hf_to_gguf.py) and deploy the .gguf with llama.cpp"


class SelectionRefused(ValueError):
    """No engine can serve this model here; the message says what to do instead."""


@dataclass(frozen=True)
class Selection:
    engine: str
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EngineAssessment:
    """One engine against one model on one node: does it serve the format, can it run, why."""

    engine: str
    serves_format: bool
    can_run: bool
    reason: str

    @property
    def usable(self) -> bool:
        return self.serves_format and self.can_run


def _registered() -> dict[str, frozenset[str]]:
    from berth.engines.registry import ENGINES

    return {name: frozenset(engine.formats) for name, engine in ENGINES.items()}


def _can_run(engine: str, hardware: Hardware) -> tuple[bool, str]:
    """Whether the engine can run on this node, and the evidence (or what is missing)."""
    if engine == "llamacpp":
        if hardware.llama_server:
            return True, f"llama.cpp's server is installed ({hardware.llama_server})"
        if hardware.xllamacpp_installed:
            return True, "llama.cpp's server is installed (the xllamacpp package)"
        if hardware.docker_available:
            return True, "llama.cpp can run in Docker (ghcr.io/ggml-org/llama.cpp server image)"
        return False, (
            "llama.cpp is not installed: `pip install xllamacpp`, put `llama-server` on PATH, "
            "or install Docker for the ghcr.io/ggml-org/llama.cpp server image"
        )
    if engine == "vllm":
        if not hardware.has_nvidia_gpu:
            where = f"{hardware.apple_silicon.chip}" if hardware.apple_silicon else f"{hardware.os} {hardware.arch}"
            return False, (
                f"vLLM needs an NVIDIA GPU and this node ({where}) has none that NVML can see "
                "(check `nvidia-smi` and the NVIDIA driver)"
            )
        gpus = f"{len(hardware.gpus)} NVIDIA GPU{'s' if len(hardware.gpus) > 1 else ''} ({hardware.gpus[0].name}, {gib(max(g.memory_total for g in hardware.gpus))})"
        if hardware.docker_available:
            return True, f"{gpus} and a Docker engine for the vllm/vllm-openai image"
        if hardware.vllm_installed:
            return True, f"{gpus} and vllm installed natively"
        return False, (
            f"vLLM needs Docker (with the NVIDIA Container Toolkit, for the vllm/vllm-openai image) "
            f"or `pip install vllm`, and this node has {gpus} but neither"
        )
    if engine == "mlx":
        if hardware.mlx_lm_installed:
            if hardware.apple_silicon:
                return True, f"mlx-lm is installed and runs natively on the {hardware.apple_silicon.chip}"
            return True, f"mlx-lm is installed (on {hardware.os} it runs on the CPU, mlx[cpu])"
        if hardware.apple_silicon:
            return False, f"MLX is not installed on this {hardware.apple_silicon.chip}: `pip install mlx-lm`"
        return False, (
            "MLX is not installed: it runs natively on Apple silicon Macs (`pip install mlx-lm`); "
            "on Linux only on the CPU, an optional extra (`pip install 'berth[mlx]'`)"
        )
    return True, f"{engine} has no hardware requirement known to berth"


def assess_engines(
    model_format: str | None,
    hardware: Hardware,
    engines: Mapping[str, frozenset[str]] | None = None,
) -> list[EngineAssessment]:
    """Every known engine against this format on this node (what `berth engines MODEL` shows)."""
    catalog = _registered() if engines is None else engines
    assessments = []
    for name in sorted(catalog):
        serves = model_format in catalog[name]
        runs, why = _can_run(name, hardware)
        if not serves:
            formats = ", ".join(sorted(catalog[name])) or "nothing"
            why = f"{name} serves {formats} models, not {_format_words(model_format)}"
        assessments.append(EngineAssessment(name, serves, runs, why))
    return assessments


def _format_words(model_format: str | None) -> str:
    if model_format is None:
        return "models of unknown format"
    if model_format.startswith("unsupported:"):
        return model_format.split(":", 1)[1]
    return model_format


def select_engine(
    model_format: str | None,
    hardware: Hardware,
    override: str = "auto",
    model_bytes: int | None = None,
    engines: Mapping[str, frozenset[str]] | None = None,
) -> Selection:
    """The engine for a model of this format (and size, when known) on this node, with the reasons.

    Raises SelectionRefused with an actionable message when none can serve it here.
    """
    catalog = _registered() if engines is None else engines
    if model_format is None:
        raise SelectionRefused(
            "cannot tell the model's format: name a .gguf file, or a folder with config.json and "
            ".safetensors weights"
        )
    if model_format.startswith("unsupported:"):
        raise SelectionRefused(
            f"no engine serves {_format_words(model_format)} files: use the model's safetensors release "
            f"(vLLM, MLX) {_CONVERT_TO_GGUF}"
        )
    size = f" ({gib(model_bytes)})" if model_bytes else ""
    facts = [f"model format: {model_format}{size}", f"node: {hardware.summary()}"]
    serving = sorted(name for name, formats in catalog.items() if model_format in formats)

    if override != "auto":
        if override not in catalog:
            raise SelectionRefused(
                f"engine {override!r} is not available in this berth; known: {', '.join(sorted(catalog))}"
            )
        if model_format not in catalog[override]:
            others = " or ".join(name for name in serving if name != override)
            served = ", ".join(sorted(catalog[override])) or "no"
            hint = f"use {others} (engine 'auto' picks one)" if others else "no engine in this berth does"
            if model_format == "safetensors":
                hint += f", {_CONVERT_TO_GGUF}"
            raise SelectionRefused(
                f"engine {override!r} does not serve {model_format} models (it serves {served} models): {hint}"
            )
        runs, why = _can_run(override, hardware)
        if not runs:
            raise SelectionRefused(f"engine {override!r} cannot run on this node: {why}")
        return Selection(override, [f"engine {override!r} was asked for", why, *facts])

    if not serving:
        raise SelectionRefused(f"no engine in this berth serves {model_format} models; {_CONVERT_TO_GGUF}")
    preferred = [name for name in PREFERENCE.get(model_format, ()) if name in serving]
    if model_format == "safetensors" and hardware.has_nvidia_gpu and "mlx" in preferred:
        preferred.remove("mlx")  # MLX would run on the CPU beside an idle GPU: only when forced
    missing: list[str] = []
    for name in preferred:
        runs, why = _can_run(name, hardware)
        if runs:
            return Selection(name, [f"{model_format} models go to {name} here", why, *facts])
        missing.append(why)
    raise SelectionRefused(_no_engine_message(model_format, hardware, missing))


def _no_engine_message(model_format: str, hardware: Hardware, missing: list[str]) -> str:
    if model_format == "safetensors":
        if hardware.apple_silicon:
            install = f"install MLX (`pip install mlx-lm`) to serve it natively on the {hardware.apple_silicon.chip}"
        elif hardware.has_nvidia_gpu:
            install = (
                "install Docker with the NVIDIA Container Toolkit (for the vllm/vllm-openai image) "
                "or `pip install vllm` to serve it with vLLM on the GPU"
            )
        else:
            install = (
                "vLLM needs an NVIDIA GPU and MLX an Apple silicon Mac; on this CPU-only node "
                "the optional MLX extra (`pip install 'berth[mlx]'`) serves it slowly on the CPU"
            )
        return f"no engine on this node serves safetensors models: {install}, {_CONVERT_TO_GGUF}"
    detail = "; ".join(missing) if missing else "no engine for it is installed"
    return f"no engine on this node serves {model_format} models: {detail}"
