"""What a deployment's `model` names on this node, and which format an engine wants: shared by
the engine's choice (berth.node.engine_choice, before anything is fetched) and prepare_files.
Light on purpose: the API imports it (through the selection, for GET /v1/engines) and must not
load the GGUF reader or the downloaders.

A local path is checked against the node's model roots (berth.domain.model_roots) here, first,
before anything looks at it: the engine's choice reads a folder's listing.
"""

import os
from pathlib import Path

from berth.domain.errors import ErrorCode
from berth.domain.model_format import format_of_name
from berth.domain.model_reference import (
    BadModelReference,
    LocalReference,
    ModelReference,
    NodeReference,
    parse_model_reference,
)
from berth.domain.model_roots import outside_roots
from berth.engines.registry import ENGINES
from berth.models.presets import Preset, looks_like_a_name, preset_for
from berth.node.failures import failure_error
from berth.settings import Settings


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
    its hub reference; for `NODE:/path` with this node's id, a local path). A reference that cannot
    name a model is a MODEL_LOADING_FAILURE."""
    preset = preset_for(model)
    if preset is not None and preset.source == "package":
        return preset
    reference = preset.reference if preset is not None else model
    exists = os.path.exists(os.path.expanduser(reference))  # os.path: no error for '~nobody' or a NUL
    try:
        source = parse_model_reference(reference, exists=exists)
    except BadModelReference as bad:
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, str(bad)) from None
    if isinstance(source, NodeReference) and source.node == Settings.from_env().node_id:
        source = LocalReference(path=source.path)  # this node's own file: used in place
        exists = True  # (checked against the roots below, whether it is there or not)
    if isinstance(source, LocalReference) and (exists or not looks_like_a_name(reference)):
        # (a bare word that is no file: a mistyped preset name, which the missing-model message names)
        refuse_outside_roots(source.path)
    return source


def refuse_outside_roots(path: str) -> None:
    """MODEL_LOADING_FAILURE, before anything reads it, for a local model path outside this node's
    model roots (BERTH_MODEL_ROOTS, links followed)."""
    refusal = outside_roots(os.path.expanduser(path), Settings.from_env().model_roots)
    if refusal:
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, refusal)
