"""prepare_files: make the model's files present on this node and say where they are.

Local paths are used in place, never copied, after a check that they exist and can be read.
A preset name (berth.presets) that is not a path here is resolved first: a packaged preset is
assembled once into $BERTH_HOME/models/ (heartbeating meanwhile), a hub preset is refused until
berth downloads models.
"""

import asyncio
import os
from pathlib import Path

from temporalio import activity

from berth.activities.failures import failure_error
from berth.domain.errors import ErrorCode
from berth.domain.model_format import format_of_name
from berth.domain.pipeline import PREPARE_FILES, PrepareFilesInput, PreparedModel
from berth.presets import (
    Preset,
    PresetUnavailable,
    assemble_packaged,
    hub_preset_message,
    is_assembled,
    missing_model_message,
    packaged_path,
    preset_for,
)
from berth.settings import Settings

REMOTE_PREFIXES = ("http://", "https://", "hf:")


def local_model_format(path: Path) -> str | None:
    if path.is_dir():
        if any(path.glob("*.safetensors")):
            return "safetensors"
        ggufs = sorted(path.glob("*.gguf"))
        return "gguf" if ggufs else None
    return format_of_name(path.name)


def check_local_model(reference: str) -> PreparedModel:
    path = Path(reference).expanduser()
    if not path.exists():
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, missing_model_message(reference))
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise failure_error(
            ErrorCode.MODEL_LOADING_FAILURE, f"model path {str(path)!r} exists but cannot be read"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, f"model file {str(path)!r} is empty")
    model_format = local_model_format(path) or "unknown"
    return PreparedModel(path=str(path.resolve()), format=model_format)


HEARTBEAT_EVERY_S = 2.0


async def resolve_preset(preset: Preset, models_dir: Path) -> str:
    """The local path of a preset's model file on this node (assembled now if need be)."""
    if preset.source == "hub":
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, hub_preset_message(preset))
    if is_assembled(preset, models_dir):
        return str(packaged_path(preset, models_dir))
    assembling = asyncio.ensure_future(asyncio.to_thread(assemble_packaged, preset, models_dir))
    while not assembling.done():
        await asyncio.wait({assembling}, timeout=HEARTBEAT_EVERY_S)
        if not assembling.done() and activity.in_activity():
            activity.heartbeat(f"assembling {preset.file_name} from {preset.package}")
    try:
        return str(assembling.result())
    except PresetUnavailable as unavailable:
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, str(unavailable)) from None


@activity.defn(name=PREPARE_FILES)
async def prepare_files(request: PrepareFilesInput) -> PreparedModel:
    preset = preset_for(request.model)
    if preset is not None:
        return check_local_model(await resolve_preset(preset, Settings.from_env().models_dir))
    if request.model.startswith(REMOTE_PREFIXES):
        raise failure_error(
            ErrorCode.MODEL_LOADING_FAILURE,
            f"{request.model!r}: downloading models is not built yet; download the file and "
            "deploy its local path",
        )
    return check_local_model(request.model)
