"""A model's files copied from the node that has them (`NODE:/path`) into this node's cache:
through that node's gateway (its file server, berth.node.file_server) with the cluster token,
resumable, sha256-verified, with the same progress and manifest as a URL download.

    $BERTH_HOME/models/copies/<node>/<digest of the path>/<file name>            a file
    $BERTH_HOME/models/copies/<node>/<digest of the path>/<folder name>/<files>  a model folder
    $BERTH_HOME/models/manifests/<node>-<path>-<digest>.json                     what was copied

The bytes go to `<file>.part`; an interrupted copy (the deployment stopped, the worker killed,
the connection cut) keeps it, with the source's ETag beside it (`<file>.part.etag`), and the next
attempt asks for the rest (`Range: bytes=N-`, `If-Range`); a source file that changed meanwhile
starts over. The whole file is checked against the sha256 the source announces (HEAD, asked
while the bytes flow: the source hashes as it sends); a mismatch discards the part. The manifest
rules are the URL downloads' (berth.models.fetch): a later instance on this node uses the copy
without asking the source (sizes and sha256 in the manifest), and a copy that is gone is copied
again only when the deploy may fetch (else MUST_REDOWNLOAD).
"""

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from berth.common.file_lock import ExclusiveLock
from berth.domain.model_format import format_of_name
from berth.domain.model_reference import NodeReference
from berth.domain.state import DownloadProgress
from berth.models.fetch import FetchedModel, FetchFailed, ModelGone
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
from berth.node.file_source import announced_sha256, ask, file_url, raise_for_status, source_client

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 0.5

ProgressCallback = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class SourceFile:
    relative: str  # '' for a single file; the path inside the folder otherwise
    remote: str  # absolute path on the source node
    size: int


def copy_folder(reference: NodeReference, models_dir: Path) -> Path:
    digest = hashlib.sha256(reference.path.encode()).hexdigest()[:16]
    return models_dir / "copies" / reference.node / digest


def copy_entry(reference: NodeReference, models_dir: Path) -> Path:
    """What the engine is given: the copied file, or the copied folder."""
    return copy_folder(reference, models_dir) / (reference.file_name or "model")


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def cached_copy(reference: NodeReference, models_dir: Path, may_refetch: bool) -> FetchedModel | None:
    """The copy made before when it is whole (no network); ModelGone when it is gone and may not
    be copied again now; None: copy it."""
    manifest = load_manifest(manifest_path(models_dir, reference.display))
    state = cache_state(manifest)
    if state is CacheState.PRESENT and all(f.sha256 and f.size is not None for f in manifest.files):
        return FetchedModel(path=manifest.entry, format=manifest.format)
    if state is CacheState.GONE and not may_refetch:
        raise ModelGone(reference.display, missing_files(manifest), offline=False)
    return None


async def copy_from_node(
    reference: NodeReference,
    gateway_url: str | None,
    token: str | None,
    models_dir: Path,
    may_refetch: bool,
    on_progress: ProgressCallback,
) -> FetchedModel:
    """`reference` present in this node's cache (copied now if need be). Raises FetchFailed
    (retryable: the source did not answer) or ModelGone."""
    cached = cached_copy(reference, models_dir, may_refetch)
    if cached is not None:
        return cached
    if not gateway_url:
        raise FetchFailed(
            f"{reference.display}: node {reference.node!r} is not in the cluster's routing map (not joined, or "
            "DOWN): start berth on it (berth join), or deploy a path on a node that is up"
        )
    if not token:
        raise FetchFailed(
            f"{reference.display}: this node has no cluster token (BERTH_CLUSTER_TOKEN or $BERTH_HOME/cluster-token) "
            f"to copy from node {reference.node!r} with"
        )
    folder = copy_folder(reference, models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    async with ExclusiveLock(folder / ".lock"):
        cached = cached_copy(reference, models_dir, may_refetch)  # another deployment copied it meanwhile
        if cached is not None:
            return cached
        async with source_client(gateway_url, token) as client:
            return await _copy(client, reference, models_dir, on_progress)


async def _copy(
    client: httpx.AsyncClient, reference: NodeReference, models_dir: Path, on_progress: ProgressCallback
) -> FetchedModel:
    info = await ask(client, reference, "GET", file_url(reference.path) + "?info")
    entry = copy_entry(reference, models_dir)
    try:
        listing = info.json()
        if listing.get("kind") == "folder":
            files = [SourceFile(_inside(reference, f["path"]), f"{reference.path}/{f['path']}", int(f["size"]))
                     for f in listing["files"]]
            fmt = "safetensors" if any(f.remote.endswith(".safetensors") for f in files) else "gguf"
        else:
            files = [SourceFile("", reference.path, int(listing["size"]))]
            fmt = format_of_name(reference.file_name) or "unknown"
    except (ValueError, LookupError, TypeError, AttributeError):
        raise FetchFailed(f"node {reference.node!r} answered about {reference.path} with what berth cannot read: "
                          "is it a berth node of the same version?") from None
    if any(f.size < 0 for f in files):
        raise FetchFailed(f"node {reference.node!r} announced a negative size in {reference.path}")
    targets = [entry / f.relative if f.relative else entry for f in files]
    total = sum(f.size for f in files)
    _check_disk_space(entry.parent, total - sum(_have(t) for t in targets), reference.display)
    path = manifest_path(models_dir, reference.display)
    manifest = ModelManifest(source=reference.display, format=fmt, entry=str(entry),
                             files=[ManifestFile(path=str(t), size=f.size) for f, t in zip(files, targets)])
    save_manifest(path, manifest)
    progress = _Progress(reference.display, total, len(files), on_progress)
    recorded = []
    for source, target in zip(files, targets):
        sha256 = await _copy_file(client, reference, source, target, progress)
        recorded.append(ManifestFile(path=str(target), size=source.size, sha256=sha256))
        progress.file_done(source.size)
        progress(source.relative or reference.file_name, 0, force=True)
    manifest.files = recorded
    mark_complete(path, manifest)
    return FetchedModel(path=str(entry), format=fmt)


def _inside(reference: NodeReference, relative: object) -> str:
    """A listed file's path inside the folder, as the source sent it: never one that would land
    outside the copy (an absolute path, '..', a NUL), whatever the source says."""
    parts = relative.split("/") if isinstance(relative, str) else []
    if not parts or any(part in ("", ".", "..") or "\0" in part or "\\" in part for part in parts):
        raise FetchFailed(f"node {reference.node!r} listed {str(relative)[:200]!r} in {reference.path}: not a path "
                          "inside the folder; nothing copied")
    return relative


class _Progress:
    def __init__(self, source: str, total: int, files: int, report: ProgressCallback):
        self.source, self.total, self.files, self.report = source, total, files, report
        self.done_before = 0  # bytes of the files already whole
        self.files_done = 0
        self.resumed = 0
        self._last = 0.0

    def __call__(self, name: str, file_done: int, force: bool = False) -> None:
        if force or time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self._last = time.monotonic()
            self.report(DownloadProgress(
                source=self.source, file=name, bytes_done=self.done_before + file_done, bytes_total=self.total,
                files_done=self.files_done, files_total=self.files, resumed_from=self.resumed,
            ))

    def file_done(self, size: int) -> None:
        self.done_before += size
        self.files_done += 1


async def _copy_file(
    client: httpx.AsyncClient, reference: NodeReference, source: SourceFile, target: Path, progress: _Progress
) -> str:
    """The file whole at `target`, checked; returns its sha256."""
    name = source.relative or reference.file_name
    url = file_url(source.remote)
    sha_asked = asyncio.ensure_future(announced_sha256(client, reference, url))
    try:
        if target.exists() and target.stat().st_size == source.size:  # copied whole by an earlier attempt
            digest = await asyncio.to_thread(_hash_prefix, target, source.size)
            expected = await sha_asked
            if digest.hexdigest() == expected:
                progress.resumed += source.size
                progress(name, source.size, force=True)
                return expected
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(target)
        etag_file = part.with_name(part.name + ".etag")
        have = part.stat().st_size if part.exists() else 0
        etag = etag_file.read_text().strip() if have and etag_file.exists() else None
        if have and (etag is None or have > source.size):
            have = 0
        headers = {"Range": f"bytes={have}-", "If-Range": etag} if have else {}
        digest = await asyncio.to_thread(_hash_prefix, part, have) if have else hashlib.sha256()
        try:
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and have:  # the part is whole (or more): take it again
                    have, digest = 0, hashlib.sha256()
                    part.unlink(missing_ok=True)
                    return await _copy_file(client, reference, source, target, progress)
                await raise_for_status(reference, response, source.remote)
                if have and response.status_code != 206:  # the source changed since (If-Range): anew
                    have, digest = 0, hashlib.sha256()
                etag_file.write_text(response.headers.get("etag", ""))
                progress.resumed += have
                with open(part, "r+b" if have else "wb") as out:
                    out.seek(have)
                    out.truncate()
                    done = have
                    progress(name, done, force=True)
                    async for chunk in response.aiter_bytes(CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        first = done == have
                        done += len(chunk)
                        if done > source.size:
                            raise FetchFailed(f"node {reference.node!r} sent more than the {source.size} bytes of "
                                              f"{source.remote} it announced", retryable=True)
                        progress(name, done, force=first)  # the first bytes at once, then twice a second
                    out.flush()
                    os.fsync(out.fileno())
        except httpx.HTTPError as error:
            done = part.stat().st_size if part.exists() else 0
            raise FetchFailed(
                f"copying {source.remote} from node {reference.node!r} failed after {done} bytes "
                f"({error or type(error).__name__}); the partial copy is kept and the next attempt resumes it",
                retryable=True,
            ) from None
        except OSError as error:
            raise FetchFailed(f"could not write {part}: {error}") from None
        progress(name, done, force=True)
        if done != source.size:
            raise FetchFailed(
                f"node {reference.node!r} sent {done} of {source.size} bytes of {source.remote}; the next attempt resumes",
                retryable=True,
            )
        expected = await sha_asked
        actual = digest.hexdigest()
        if actual != expected:
            part.unlink(missing_ok=True)
            etag_file.unlink(missing_ok=True)
            raise FetchFailed(
                f"{reference.display}: sha256 mismatch: node {reference.node!r} announced {expected}, the copy of "
                f"{source.remote} has {actual} ({done} bytes). The copy was deleted; if the file changes on "
                f"{reference.node!r} while it is copied, retry once it is written"
            )
        os.replace(part, target)
        etag_file.unlink(missing_ok=True)
        return actual
    finally:
        if not sha_asked.done():
            sha_asked.cancel()
        elif not sha_asked.cancelled():
            sha_asked.exception()  # retrieved: a failure of the copy itself is what is reported


def _have(target: Path) -> int:
    for path in (target, part_path(target)):
        try:
            return path.stat().st_size
        except OSError:
            continue
    return 0


def _check_disk_space(folder: Path, needed: int, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FetchFailed(
            f"{source} needs {needed / 1e9:.2f} GB more and the disk holding {folder} has {free / 1e9:.2f} GB free: "
            "free some space (or point BERTH_HOME at a bigger disk), then retry"
        )


def _hash_prefix(path: Path, size: int) -> "hashlib._Hash":
    digest = hashlib.sha256()
    left = size
    with open(path, "rb") as existing:
        while left > 0 and (chunk := existing.read(min(CHUNK_BYTES, left))):
            digest.update(chunk)
            left -= len(chunk)
    return digest
