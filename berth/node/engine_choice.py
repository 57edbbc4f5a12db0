"""Which engine serves this model on this node (the node's hardware, probed): the first thing
prepare_files does when the workflow has not chosen one. The API's /v1/engines report reads a
model's format and size through it too.

It runs before the files are fetched, so a remote model's format comes from its name (a URL, a
named hub file), from the node's cache, or from the hub repo's file list (one listing, no
download): a model no engine here can serve fails before gigabytes are fetched for nothing.
"""

import asyncio
import os
from pathlib import Path

from berth.domain.errors import ErrorCode
from berth.domain.model_format import format_of_name
from berth.common.cluster_token import load_cluster_token
from berth.domain.model_reference import HubReference, LocalReference, NodeReference, UrlReference, is_node_reference
from berth.domain.pipeline import EngineChoice
from berth.engines.selection import SelectionRefused, select_engine as choose
from berth.models.fetch import FetchFailed, cached_format
from berth.models.hub import HubError, list_hub_repo
from berth.models.hub_selection import select_hub_files
from berth.models.presets import Preset, missing_model_message, preset_for
from berth.node.failures import failure_error
from berth.node.file_source import node_model_format
from berth.node.hardware import probe_hardware
from berth.node.model_source import local_model_format, model_source, wanted_format
from berth.settings import Settings


def model_format_of(reference: str) -> str | None:
    """The format of a local model or a preset; of a remote one only as far as its name says."""
    path = os.path.expanduser(reference)  # os.path: no error for '~nobody', a NUL or a too-long name
    if os.path.exists(path):
        return local_model_format(Path(path))
    preset = preset_for(reference)  # resolved later, by prepare_files: its format is known now
    if preset is not None:
        return preset.format
    return format_of_name(reference.split("#", 1)[0])


def remote_model_format(reference: UrlReference | HubReference, override: str) -> str | None:
    """A remote model's format, fetching at most the hub repo's file list. Blocking."""
    if isinstance(reference, UrlReference):
        return format_of_name(reference.file_name)
    if reference.file:
        return format_of_name(reference.file)
    known = cached_format(reference, Settings.from_env().models_dir)
    if known is not None:
        return known
    listing = list_hub_repo(reference)
    return select_hub_files(listing, reference, wanted_format(override)).format


async def format_for_selection(model: str, override: str, source_gateway_url: str | None = None) -> str | None:
    source = model_source(model)
    if isinstance(source, Preset):
        return source.format
    if isinstance(source, LocalReference):
        return model_format_of(source.path)
    if isinstance(source, NodeReference):  # another node's: its name, or its folder's listing there
        settings = Settings.from_env()
        try:
            return await node_model_format(
                source, source_gateway_url, load_cluster_token(settings), settings.models_dir
            )
        except FetchFailed as failed:
            code = ErrorCode.TRANSIENT if failed.retryable else ErrorCode.MODEL_LOADING_FAILURE
            raise failure_error(code, str(failed)) from None
    try:
        return await asyncio.to_thread(remote_model_format, source, override)
    except HubError as error:
        if not model.startswith("hf:") and preset_for(model) is None:  # `org/repo`: maybe a mistyped path
            raise failure_error(
                ErrorCode.MODEL_LOADING_FAILURE,
                f"{model!r} is not a file or folder on this node, and as a Hugging Face repo: {error}",
            ) from None
        code = ErrorCode.TRANSIENT if error.kind == "network" else ErrorCode.MODEL_LOADING_FAILURE
        raise failure_error(code, str(error)) from None


def model_bytes_of(reference: str) -> int | None:
    """The size of a local model (a file, or a folder's weight files), None when not local."""
    path = Path(os.path.expanduser(reference))
    try:
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            weights = [*path.glob("*.safetensors"), *path.glob("*.gguf")]
            return sum(p.stat().st_size for p in weights) or None
    except OSError:
        return None
    return None


async def choose_engine(model: str, override: str = "auto", source_gateway_url: str | None = None) -> EngineChoice:
    """The engine for `model` here, with `override` ("auto": by its format and this node's hardware);
    a refusal is ENGINE_UNAVAILABLE (MODEL_LOADING_FAILURE for a missing file). `source_gateway_url`:
    where another node's model (NODE:/path) is, to read its folder's listing."""
    model_format = await format_for_selection(model, override, source_gateway_url)
    hardware = await asyncio.to_thread(probe_hardware)
    try:
        selection = choose(model_format, hardware, override, model_bytes_of(model))
    except SelectionRefused as refused:
        path = Path(model).expanduser()
        if not path.exists() and not model.startswith(("http://", "https://", "hf:")) and not is_node_reference(model):
            # a missing file says more than "unknown format"
            raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, missing_model_message(model)) from None
        raise failure_error(ErrorCode.ENGINE_UNAVAILABLE, str(refused)) from None
    return EngineChoice(engine=selection.engine, reasons=selection.reasons)
