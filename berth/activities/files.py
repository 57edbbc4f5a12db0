"""prepare_files: make the model's files present on this node and say where they are.

Local paths are used in place, never copied, after a check that they exist and can be read.
"""

import os
from pathlib import Path

from temporalio import activity

from berth.activities.failures import failure_error
from berth.domain.errors import ErrorCode
from berth.domain.model_format import format_of_name
from berth.domain.pipeline import PREPARE_FILES, PrepareFilesInput, PreparedModel

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
        raise failure_error(
            ErrorCode.MODEL_LOADING_FAILURE,
            f"model path {str(path)!r} does not exist on this node",
        )
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise failure_error(
            ErrorCode.MODEL_LOADING_FAILURE, f"model path {str(path)!r} exists but cannot be read"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, f"model file {str(path)!r} is empty")
    model_format = local_model_format(path) or "unknown"
    return PreparedModel(path=str(path.resolve()), format=model_format)


@activity.defn(name=PREPARE_FILES)
async def prepare_files(request: PrepareFilesInput) -> PreparedModel:
    if request.model.startswith(REMOTE_PREFIXES):
        raise failure_error(
            ErrorCode.MODEL_LOADING_FAILURE,
            f"{request.model!r}: downloading models is not built yet; download the file and "
            "deploy its local path",
        )
    return check_local_model(request.model)
