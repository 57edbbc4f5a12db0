"""Make a remote model (a URL, a Hugging Face repo) present in this node's cache, and say where.

    $BERTH_HOME/models/url/<hash of the URL>/<file>     URL downloads
    $BERTH_HOME/models/hub/models--org--repo/...         huggingface_hub's own cache layout
    $BERTH_HOME/models/manifests/*.json                  what berth fetched (berth.models.manifest)

The manifest decides, without any network, between using the cache, resuming, fetching, and
refusing: files berth had fetched and that are now gone are only fetched again when this deploy
may (the first deploy, or a user's retry); an automatic restart says MUST_REDOWNLOAD instead, and
so does a node where HF_HUB_OFFLINE=1 forbids fetching.
"""

import asyncio
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from berth.domain.model_format import format_of_name
from berth.domain.model_reference import HubReference, UrlReference
from berth.domain.state import DownloadProgress
from berth.models.hub import HubError, download_hub_files, list_hub_repo
from berth.models.hub_selection import select_hub_files
from berth.models.manifest import (
    CacheState,
    ManifestFile,
    ModelManifest,
    cache_state,
    load_manifest,
    manifest_path,
    mark_complete,
    missing_files,
    save_manifest,
)
from berth.models.url_download import DownloadError, UrlProgress, download_url

ProgressCallback = Callable[[DownloadProgress], None]
HUB_FORMATS = ("gguf", "safetensors")


class ModelGone(Exception):
    """Files berth had fetched for this model are gone and may not be fetched again now."""

    def __init__(self, source: str, missing: list[str], offline: bool):
        self.source, self.missing, self.offline = source, missing, offline
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        why = (
            "HF_HUB_OFFLINE=1 on this node forbids fetching them again"
            if offline
            else "berth does not fetch them again on an automatic restart"
        )
        super().__init__(f"the files berth downloaded for {source} are gone from this node: {shown}; {why}")


class FetchFailed(Exception):
    """The model could not be fetched. `retryable`: a network fault worth another attempt."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class FetchedModel:
    path: str  # what the engine is given
    format: str
    note: str | None = None  # e.g. the GGUF choice, shown to the user


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


async def fetch_model(
    reference: UrlReference | HubReference,
    want_format: str | None,
    models_dir: Path,
    may_refetch: bool,
    on_progress: ProgressCallback,
) -> FetchedModel:
    if isinstance(reference, UrlReference):
        return await _fetch_url(reference, models_dir, may_refetch, on_progress)
    return await _fetch_hub(reference, want_format, models_dir, may_refetch, on_progress)


def cached_format(reference: UrlReference | HubReference, models_dir: Path) -> str | None:
    """The format of a model this node has fetched whole before (no network), or None."""
    keys = [reference.url] if isinstance(reference, UrlReference) else [
        _hub_key(reference, fmt) for fmt in HUB_FORMATS
    ]
    for key in keys:
        manifest = load_manifest(manifest_path(models_dir, key))
        if manifest is not None and manifest.complete:
            return manifest.format
    return None


# ---- URLs -----------------------------------------------------------------------------------------


def url_target(reference: UrlReference, models_dir: Path) -> Path:
    return models_dir / "url" / hashlib.sha256(reference.url.encode()).hexdigest()[:16] / reference.file_name


async def _fetch_url(
    reference: UrlReference, models_dir: Path, may_refetch: bool, on_progress: ProgressCallback
) -> FetchedModel:
    path = manifest_path(models_dir, reference.url)
    manifest = load_manifest(path)
    fmt = format_of_name(reference.file_name) or "unknown"
    usable = _usable(manifest, reference.url, may_refetch, offline=False)
    if usable is not None:
        recorded = manifest.files[0].sha256 if manifest.files else None
        if reference.sha256 and recorded != reference.sha256:
            raise FetchFailed(
                f"{reference.url}: sha256 mismatch: expected {reference.sha256}, got {recorded} (the copy "
                f"downloaded before, {usable.path}). Check the expected hash; to fetch the file again, "
                "delete that copy and retry"
            )
        return usable
    target = url_target(reference, models_dir)
    manifest = ModelManifest(
        source=reference.url, format=fmt, entry=str(target),
        files=[ManifestFile(path=str(target), sha256=reference.sha256)],
    )
    save_manifest(path, manifest)

    def report(progress: UrlProgress) -> None:
        on_progress(DownloadProgress(
            source=reference.url, file=reference.file_name, bytes_done=progress.bytes_done,
            bytes_total=progress.bytes_total, files_done=int(progress.bytes_done == progress.bytes_total),
            files_total=1, resumed_from=progress.resumed_from,
        ))

    try:
        downloaded = await download_url(reference, target, report)
    except DownloadError as error:
        raise FetchFailed(str(error), retryable=error.kind in ("network", "http")) from None
    manifest.files = [ManifestFile(path=str(target), size=downloaded.size, sha256=downloaded.sha256)]
    mark_complete(path, manifest)
    return FetchedModel(path=str(target), format=fmt)


# ---- the Hugging Face hub ---------------------------------------------------------------------------


def _hub_key(reference: HubReference, want_format: str | None) -> str:
    return f"{reference.display}|{want_format or 'auto'}"


async def _fetch_hub(
    reference: HubReference,
    want_format: str | None,
    models_dir: Path,
    may_refetch: bool,
    on_progress: ProgressCallback,
) -> FetchedModel:
    path = manifest_path(models_dir, _hub_key(reference, want_format))
    manifest = load_manifest(path)
    offline = hub_offline()
    usable = _usable(manifest, reference.display, may_refetch, offline)
    if usable is not None:
        return usable
    try:
        listing = await asyncio.to_thread(list_hub_repo, reference)
        selection = select_hub_files(listing, reference, want_format)
    except HubError as error:
        raise FetchFailed(str(error), retryable=error.kind == "network") from None
    cache_dir = models_dir / "hub"
    check_disk_space(cache_dir, sum(f.size or 0 for f in selection.files), reference.display)
    snapshot = cache_dir / f"models--{listing.repo.replace('/', '--')}" / "snapshots" / listing.commit
    entry = snapshot / selection.entry if selection.entry else snapshot
    manifest = ModelManifest(
        source=reference.display, format=selection.format, entry=str(entry), commit=listing.commit,
        choice=selection.reason,
        files=[ManifestFile(path=str(snapshot / f.path), size=f.size, sha256=f.sha256) for f in selection.files],
    )
    save_manifest(path, manifest)
    try:
        snapshot = await download_hub_files(listing, [f.path for f in selection.files], cache_dir, on_progress)
    except HubError as error:
        raise FetchFailed(str(error), retryable=error.kind == "network") from None
    missing = missing_files(manifest)
    if missing:
        raise FetchFailed(f"the hub download of {reference.display} ended without {', '.join(missing)}")
    mark_complete(path, manifest)
    return FetchedModel(path=str(entry), format=selection.format, note=selection.reason)


def check_disk_space(folder: Path, needed: int, source: str) -> None:
    """Refuse a download that cannot fit, before it fills the disk (what is already there counts)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    have = sum(p.stat().st_size for p in folder.rglob("*.incomplete") if p.is_file())
    if needed - have > free:
        raise FetchFailed(
            f"{source} needs {needed / 1e9:.2f} GB and the disk holding {folder} has {free / 1e9:.2f} GB free: "
            "free some space (or point BERTH_HOME at a bigger disk), then retry"
        )


def _usable(manifest: ModelManifest | None, source: str, may_refetch: bool, offline: bool) -> FetchedModel | None:
    """The cached model when it is whole; raises ModelGone when it is gone and may not come back."""
    state = cache_state(manifest)
    if state is CacheState.PRESENT:
        return FetchedModel(path=manifest.entry, format=manifest.format, note=manifest.choice)
    if state is CacheState.GONE and (offline or not may_refetch):
        raise ModelGone(source, missing_files(manifest), offline)
    return None
