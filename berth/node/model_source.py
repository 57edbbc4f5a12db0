"""What a deployment's `model` names on this node, and which format an engine wants: shared by
the engine's choice (berth.node.engine_choice, before anything is fetched) and prepare_files.
Light on purpose: the API imports it (through the selection, for GET /v1/engines) and must not
load the GGUF reader or the downloaders.
"""

from pathlib import Path

from berth.domain.errors import ErrorCode
from berth.domain.model_format import format_of_name
from berth.domain.model_reference import BadModelReference, ModelReference, parse_model_reference
from berth.engines.registry import ENGINES
from berth.models.presets import Preset, preset_for
from berth.node.failures import failure_error


def local_model_format(path: Path) -> str | None:
    if path.is_dir():
        if any(path.glob("*.safetensors")):
            return "safetensors"
        ggufs = sorted(path.glob("*.gguf"))
        return "gguf" if ggufs else None
    return format_of_name(path.name)


def wanted_format(engine: str | None) -> str | None:
    """The format to fetch for an engine: llama.cpp wants GGUF, vLLM and MLX safetensors."""
    spec = ENGINES.get(engine or "")
    if spec is None:
        return None
    return "gguf" if "gguf" in spec.formats else next(iter(sorted(spec.formats)), None)


def model_source(model: str) -> Preset | ModelReference:
    """What `model` names on this node: a packaged preset, or a parsed reference (for a hub preset,
    its hub reference). A reference that cannot name a model is a MODEL_LOADING_FAILURE."""
    preset = preset_for(model)
    if preset is not None and preset.source == "package":
        return preset
    reference = preset.reference if preset is not None else model
    try:
        return parse_model_reference(reference, exists=Path(reference).expanduser().exists())
    except BadModelReference as bad:
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, str(bad)) from None
