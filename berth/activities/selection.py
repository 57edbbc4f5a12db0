"""select_engine: which engine serves this model on this node (the node's hardware, probed)."""

import asyncio
from pathlib import Path

from temporalio import activity

from berth.activities.failures import failure_error
from berth.activities.files import local_model_format
from berth.activities.hardware import probe_hardware
from berth.domain.errors import ErrorCode
from berth.domain.model_format import format_of_name
from berth.domain.pipeline import SELECT_ENGINE, EngineChoice, SelectEngineInput
from berth.engines.selection import SelectionRefused, select_engine as choose
from berth.presets import missing_model_message, preset_for


def model_format_of(reference: str) -> str | None:
    path = Path(reference).expanduser()
    if path.exists():
        return local_model_format(path)
    preset = preset_for(reference)  # resolved later, by prepare_files: its format is known now
    if preset is not None:
        return preset.format
    return format_of_name(reference)


def model_bytes_of(reference: str) -> int | None:
    """The size of a local model (a file, or a folder's weight files), None when not local."""
    path = Path(reference).expanduser()
    try:
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            weights = [*path.glob("*.safetensors"), *path.glob("*.gguf")]
            return sum(p.stat().st_size for p in weights) or None
    except OSError:
        return None
    return None


@activity.defn(name=SELECT_ENGINE)
async def select_engine(request: SelectEngineInput) -> EngineChoice:
    hardware = await asyncio.to_thread(probe_hardware)
    try:
        selection = choose(
            model_format_of(request.model), hardware, request.override, model_bytes_of(request.model)
        )
    except SelectionRefused as refused:
        path = Path(request.model).expanduser()
        if not path.exists() and not request.model.startswith(("http://", "https://", "hf:")):
            # a missing file says more than "unknown format"
            raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, missing_model_message(request.model)) from None
        raise failure_error(ErrorCode.ENGINE_UNAVAILABLE, str(refused)) from None
    return EngineChoice(engine=selection.engine, reasons=selection.reasons)
