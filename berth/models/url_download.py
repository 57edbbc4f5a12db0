"""Download one model file from an http(s) URL: resumable, checked, never half-visible.

The bytes go to `<target>.partial`; only a complete file (size as announced, sha256 as given) is
renamed to `<target>`, so a reader never sees a truncated model. An interrupted download (the
deployment stopped, the worker killed, the network gone) leaves the partial file, and the next
attempt asks the server for the rest with a `Range: bytes=N-` request (a server that ignores it
answers 200 and the file starts over). One download per target at a time, across processes: a
lock file next to it.
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
from berth.domain.model_reference import UrlReference

CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 0.5


class DownloadError(Exception):
    """The download did not complete. `kind`: not_found, auth, network, http, checksum, disk."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class UrlProgress:
    bytes_done: int
    bytes_total: int | None
    resumed_from: int


@dataclass(frozen=True)
class DownloadedFile:
    path: Path
    size: int
    sha256: str


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


async def download_url(
    reference: UrlReference,
    target: Path,
    on_progress: Callable[[UrlProgress], None],
    client: httpx.AsyncClient | None = None,
) -> DownloadedFile:
    """`reference` fetched to `target` (resuming a partial one). Raises DownloadError."""
    target.parent.mkdir(parents=True, exist_ok=True)
    async with ExclusiveLock(target.with_name(target.name + ".lock")):
        if target.exists() and not partial_path(target).exists():
            # whole already: another deployment fetched it while this one waited for the lock (only
            # whole files are ever renamed into place)
            return await asyncio.to_thread(_already_whole, reference, target)
        if client is None:
            async with _new_client() as own_client:
                return await _download(reference, target, on_progress, own_client)
        return await _download(reference, target, on_progress, client)


def _new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True, trust_env=True
    )


async def _download(
    reference: UrlReference, target: Path, on_progress: Callable[[UrlProgress], None], client: httpx.AsyncClient
) -> DownloadedFile:
    part = partial_path(target)
    have = part.stat().st_size if part.exists() else 0
    digest = await asyncio.to_thread(_hash_prefix, part, have)
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        async with client.stream("GET", reference.url, headers=headers) as response:
            if response.status_code == 416 and have:  # the partial file is already whole (or bigger)
                await response.aclose()
                part.unlink(missing_ok=True)
                return await _download(reference, target, on_progress, client)
            _raise_for_status(reference, response)
            if have and response.status_code != 206:
                have, digest = 0, hashlib.sha256()  # the server ignored the Range: start over
            total = _total_size(response, have)
            if total is not None and total - have > shutil.disk_usage(part.parent).free:
                raise DownloadError(
                    "disk",
                    f"{reference.url} is {total / 1e9:.2f} GB and the disk holding {part.parent} has "
                    f"{shutil.disk_usage(part.parent).free / 1e9:.2f} GB free: free some space, then retry",
                )
            with open(part, "r+b" if have else "wb") as out:
                out.seek(have)
                done, last_report = have, 0.0
                on_progress(UrlProgress(done, total, have))
                async for chunk in response.aiter_bytes():  # as it arrives: a stop loses nothing received
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                        last_report = time.monotonic()
                        on_progress(UrlProgress(done, total, have))
                out.flush()
                os.fsync(out.fileno())
    except httpx.HTTPError as error:
        done = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            "network",
            f"downloading {reference.url} failed after {done} bytes: {error or type(error).__name__}; "
            "the partial file is kept and the next attempt resumes it",
        ) from None
    except OSError as error:
        raise DownloadError("disk", f"could not write {part}: {error}") from None
    on_progress(UrlProgress(done, total, have))
    if total is not None and done != total:
        raise DownloadError(
            "network", f"{reference.url}: the server sent {done} of {total} bytes; the next attempt resumes"
        )
    sha256 = digest.hexdigest()
    if reference.sha256 and sha256 != reference.sha256:
        part.unlink(missing_ok=True)  # a whole file with the wrong bytes: nothing to resume
        raise DownloadError(
            "checksum",
            f"{reference.url}: sha256 mismatch: expected {reference.sha256}, got {sha256} "
            f"({done} bytes). The file was deleted; check the URL and the expected hash",
        )
    os.replace(part, target)
    return DownloadedFile(path=target, size=done, sha256=sha256)


def _already_whole(reference: UrlReference, target: Path) -> DownloadedFile:
    size = target.stat().st_size
    digest = _hash_prefix(target, size).hexdigest()
    if reference.sha256 and digest != reference.sha256:
        target.unlink(missing_ok=True)
        raise DownloadError(
            "checksum", f"{target} (from {reference.url}): sha256 mismatch: expected {reference.sha256}, got {digest}"
        )
    return DownloadedFile(path=target, size=size, sha256=digest)


def _raise_for_status(reference: UrlReference, response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    if status == 404:
        raise DownloadError("not_found", f"{reference.url} answered 404 Not Found: check the URL")
    if status in (401, 403):
        raise DownloadError(
            "auth", f"{reference.url} answered {status}: the server wants credentials berth does not send"
        )
    raise DownloadError("http", f"{reference.url} answered HTTP {status}")


def _total_size(response: httpx.Response, have: int) -> int | None:
    """The whole file's size, from Content-Range (a resumed answer) or Content-Length."""
    content_range = response.headers.get("content-range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("content-length")
    if length and length.isdigit():
        return have + int(length)
    return None


def _hash_prefix(part: Path, size: int) -> "hashlib._Hash":
    """sha256 state over the first `size` bytes already on disk (a resumed download is checked whole)."""
    digest = hashlib.sha256()
    if size:
        with open(part, "rb") as existing:
            while chunk := existing.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest
