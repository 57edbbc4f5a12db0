"""Which engine serves a model here: a pure function of the model's format and an override."""

from dataclasses import dataclass, field

from berth.engines.registry import ENGINES


class SelectionRefused(ValueError):
    """No engine can serve this model here; the message says what to do instead."""


@dataclass(frozen=True)
class Selection:
    engine: str
    reasons: list[str] = field(default_factory=list)


def select_engine(model_format: str | None, override: str = "auto") -> Selection:
    if model_format is None:
        raise SelectionRefused(
            "cannot tell the model's format: name a .gguf file, or a folder with .safetensors weights"
        )
    if model_format.startswith("unsupported:"):
        what = model_format.split(":", 1)[1]
        raise SelectionRefused(
            f"no engine serves {what} files: convert the model to GGUF (llama.cpp's "
            "convert_hf_to_gguf.py) or use its safetensors release"
        )
    serving = sorted(name for name, engine in ENGINES.items() if model_format in engine.formats)
    if override != "auto":
        engine = ENGINES.get(override)
        if engine is None:
            raise SelectionRefused(f"engine {override!r} is not available in this berth; known: {', '.join(sorted(ENGINES))}")
        if model_format not in engine.formats:
            raise SelectionRefused(
                f"engine {override!r} does not serve {model_format} models"
                + (f"; {', '.join(serving)} does" if serving else "")
            )
        return Selection(override, [f"engine {override!r} was asked for"])
    if not serving:
        raise SelectionRefused(
            f"no engine on this machine serves {model_format} models: use a GGUF file for llama.cpp"
        )
    return Selection(serving[0], [f"{model_format} models are served by {serving[0]}"])
