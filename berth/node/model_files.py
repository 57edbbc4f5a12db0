"""The model's files present on this node, and where they are: what prepare_files does once the
engine is chosen (berth.node.engine_choice) and before the memory is planned (berth.node.memory_plan).

Local paths are used in place, never copied, after a check that they lie inside the node's model
roots (BERTH_MODEL_ROOTS, links followed: berth.domain.model_roots), exist and can be read. Every
path handed to an engine passes that check, presets and downloads too (they live under
$BERTH_HOME/models, which is always a root), and so does every link inside a model folder.
A preset name (berth.models.presets) that is not a path here is resolved first: a packaged preset is
assembled once into $BERTH_HOME/models/ (heartbeating meanwhile), a hub preset is its hub reference.
URLs and Hugging Face repos are fetched into the node's cache (berth.models.fetch), with progress
in the deployment's state, resumable after a stop; files berth fetched that are gone now are
MUST_REDOWNLOAD unless this deploy may fetch them again. Another node's files (`NODE:/path`) are
copied from that node's gateway the same way (berth.node.file_copy); this node's own are local.
"""

import asyncio
import os
from pathlib import Path

from temporalio import activity

from berth.domain.errors import ErrorCode
from berth.common.cluster_token import load_cluster_token
from berth.domain.model_reference import LocalReference, NodeReference
from berth.domain.model_roots import outside_roots
from berth.domain.pipeline import PrepareFilesInput, PreparedModel
from berth.models.fetch import FetchFailed, ModelGone, fetch_model
from berth.node.download_progress import ProgressReporter
from berth.node.file_copy import copy_from_node
from berth.node.file_source import gateway_of
from berth.node.failures import failure_error
from berth.node.model_source import local_model_format, model_source, refuse_outside_roots, wanted_format
from berth.models.presets import (
    Preset,
    PresetUnavailable,
    assemble_packaged,
    is_assembled,
    missing_model_message,
    packaged_path,
)
from berth.settings import Settings


def check_local_model(reference: str, resolve: bool = True) -> PreparedModel:
    """`resolve`: hand the engine the canonical path (False for the hub cache, whose files are
    symlinks to content-named blobs: the snapshot path keeps the file's name)."""
    refuse_outside_roots(reference)
    path = Path(reference).expanduser()
    if not path.exists():
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, missing_model_message(reference))
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise failure_error(
            ErrorCode.MODEL_LOADING_FAILURE, f"model path {str(path)!r} exists but cannot be read"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, f"model file {str(path)!r} is empty")
    if path.is_dir():
        refuse_escaping_links(path)
    model_format = local_model_format(path) or "unknown"
    return PreparedModel(path=str(path.resolve() if resolve else path.absolute()), format=model_format)


# a model folder holds tens of files (a hub snapshot, config, tokenizer, shards): more is no model folder
MAX_FOLDER_ENTRIES = 10_000


def refuse_escaping_links(folder: Path) -> None:
    """MODEL_LOADING_FAILURE for a link inside a model folder that points outside the model roots:
    the engine would follow it. Links are not followed into folders (each is checked as a link)."""
    roots = Settings.from_env().model_roots
    seen = 0
    for current, folders, files in os.walk(folder):
        for name in (*folders, *files):
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise failure_error(
                    ErrorCode.MODEL_LOADING_FAILURE,
                    f"model folder {str(folder)!r} holds more than {MAX_FOLDER_ENTRIES} files and folders: "
                    "give the folder of one model",
                )
            entry = os.path.join(current, name)
            if os.path.islink(entry):
                refusal = outside_roots(entry, roots)
                if refusal:
                    raise failure_error(
                        ErrorCode.MODEL_LOADING_FAILURE, f"in model folder {str(folder)!r}: {refusal}"
                    )


# well inside prepare_files' heartbeat timeout (3 s in the workflow)
HEARTBEAT_EVERY_S = 0.5


async def assemble_preset(preset: Preset, models_dir: Path) -> str:
    """The local path of a packaged preset's model file on this node (assembled now if need be)."""
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


async def files_in_place(request: PrepareFilesInput) -> PreparedModel:
    settings = Settings.from_env()
    models_dir = settings.models_dir
    source = model_source(request.model)
    if isinstance(source, Preset):
        return check_local_model(await assemble_preset(source, models_dir))
    if isinstance(source, LocalReference):
        return check_local_model(source.path)
    reporter = ProgressReporter()
    if isinstance(source, NodeReference):  # another node's files: copied from its gateway
        gateway = request.source_gateway_url or await gateway_of(source.node)
        fetching = copy_from_node(
            source, gateway, load_cluster_token(settings), models_dir, request.may_refetch, reporter
        )
    else:
        fetching = fetch_model(source, wanted_format(request.engine), models_dir, request.may_refetch, reporter)
    try:
        fetched = await reporter.run(fetching)
    except ModelGone as gone:
        raise failure_error(ErrorCode.MUST_REDOWNLOAD, str(gone), missing_files=gone.missing) from None
    except FetchFailed as failed:
        code = ErrorCode.TRANSIENT if failed.retryable else ErrorCode.MODEL_LOADING_FAILURE
        raise failure_error(code, str(failed)) from None
    prepared = check_local_model(fetched.path, resolve=False)
    return prepared.model_copy(update={"note": fetched.note})
