"""The Hugging Face hub: list a repo's files at a revision, and download some of them into the cache.

Listing runs huggingface_hub in the calling thread (`HfApi.model_info(files_metadata=True)`, one GET of
/api/models/{repo}/revision/{rev}?blobs=True). Downloading runs in a child process (berth.models.hub_fetch)
so that a stopped deployment ends it at once: cancelling the awaiting task kills the child's whole process
group, and what it had fetched stays in `blobs/<etag>.incomplete`, which the next download resumes with a
`Range: bytes=N-` request. huggingface_hub 2.4.0 itself never resumes across processes (each download
goes to a process-unique temporary file, deleted on failure), hence the child's own transfer loop.

The cache is huggingface_hub's layout (cache_dir/models--org--repo/{blobs,snapshots,refs}), so
huggingface_hub, `hf cache` and other tools read what berth fetched, and the other way round.

HF_ENDPOINT, HF_HUB_OFFLINE and HF_TOKEN are read on every call: huggingface_hub reads the first two
once, when it is imported, which in a long-lived worker may be long before.
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from berth.domain.model_reference import HubReference
from berth.domain.state import DownloadProgress
from berth.models.hub_errors import HubError, hub_endpoint, hub_error_from, hub_offline, offline_error

__all__ = [
    "HubError", "HubFile", "HubListing", "download_hub_files", "list_hub_repo", "repo_cache_folder", "snapshot_folder",
]

DEFAULT_REVISION = "main"
LIST_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 0.5
CHUNK_BYTES = 1 << 20  # what the child writes (and can lose to a kill) at a time
COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
STDERR_LINES_KEPT = 20


@dataclass(frozen=True)
class HubFile:
    path: str  # path inside the repo
    size: int | None
    sha256: str | None  # the LFS sha256 when the hub gives one


@dataclass(frozen=True)
class HubListing:
    repo: str
    commit: str  # the resolved commit sha (revision -> commit)
    files: tuple[HubFile, ...]
    revision: str | None = None  # what was asked for (None: the default branch); recorded in the cache's refs/

    def file(self, path: str) -> HubFile | None:
        return next((f for f in self.files if f.path == path), None)


def repo_cache_folder(cache_dir: Path, repo: str) -> Path:
    return Path(cache_dir) / ("models--" + repo.replace("/", "--"))


def snapshot_folder(cache_dir: Path, repo: str, commit: str) -> Path:
    return repo_cache_folder(cache_dir, repo) / "snapshots" / commit


# ---- listing --------------------------------------------------------------------------------------


def list_hub_repo(ref: HubReference, cache_dir: Path | None = None) -> HubListing:
    """The files of `ref.repo` at `ref.revision` (blocking: call it in a thread).

    With HF_HUB_OFFLINE=1 nothing is asked of the hub: the listing comes from what `cache_dir` holds of
    that revision (a snapshot berth or huggingface_hub fetched before), else HubError("offline")."""
    if hub_offline():
        listing = cached_listing(ref, cache_dir) if cache_dir is not None else None
        if listing is None:
            raise offline_error(ref.display)
        return listing
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint())  # the token: HF_TOKEN (or the saved login), read by huggingface_hub per call
    try:
        info = api.model_info(ref.repo, revision=ref.revision, files_metadata=True, timeout=LIST_TIMEOUT_S)
    except Exception as error:
        raise hub_error_from(error, ref.repo, ref.revision) from None
    if not info.sha:
        raise HubError(
            "network",
            f"The hub at {hub_endpoint()} did not say which commit {ref.display} is at; is HF_ENDPOINT a Hugging "
            "Face hub? Check it, then deploy again.",
        )
    files = tuple(
        HubFile(
            path=sibling.rfilename,
            size=sibling.lfs.size if sibling.lfs else sibling.size,
            sha256=sibling.lfs.sha256 if sibling.lfs else None,
        )
        for sibling in info.siblings or []
    )
    return HubListing(repo=ref.repo, commit=info.sha, files=files, revision=ref.revision)


def cached_listing(ref: HubReference, cache_dir: Path) -> HubListing | None:
    """The listing of a revision from the cache alone (only the files fetched before), or None."""
    storage = repo_cache_folder(cache_dir, ref.repo)
    revision = ref.revision or DEFAULT_REVISION
    commit = None
    if COMMIT_PATTERN.match(revision) and (storage / "snapshots" / revision).is_dir():
        commit = revision
    elif (storage / "refs" / revision).is_file():
        commit = (storage / "refs" / revision).read_text().strip()
    snapshot = storage / "snapshots" / (commit or "")
    if not commit or not snapshot.is_dir():
        return None
    files = []
    for path in sorted(snapshot.rglob("*")):
        if not path.is_file():
            continue
        blob_name = Path(os.readlink(path)).name if path.is_symlink() else ""
        files.append(HubFile(
            path=path.relative_to(snapshot).as_posix(),
            size=path.stat().st_size,
            sha256=blob_name if SHA256_PATTERN.match(blob_name) else None,
        ))
    return HubListing(repo=ref.repo, commit=commit, files=tuple(files), revision=ref.revision)


# ---- downloading ----------------------------------------------------------------------------------


async def download_hub_files(
    listing: HubListing,
    paths: list[str],
    cache_dir: Path,
    on_progress: Callable[[DownloadProgress], None],
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> Path:
    """Download `paths` of `listing.repo` at `listing.commit` into the cache; the snapshot folder.

    Resumes what an earlier, interrupted call left. Cancelling the awaiting task kills the download at
    once (its child process group), keeping the partial file for the next call. `on_progress` is called
    at most every PROGRESS_EVERY_S, and once at the end; `chunk_bytes`: how much is written at a time."""
    source = f"hf:{listing.repo}"
    files = _wanted(listing, paths)
    snapshot = snapshot_folder(cache_dir, listing.repo, listing.commit)
    total = sum(f.size or 0 for f in files) if all(f.size is not None for f in files) else None
    if all((snapshot / f.path).is_file() for f in files):  # all there already: no child, no network
        present = sum((snapshot / f.path).stat().st_size for f in files)
        on_progress(DownloadProgress(
            source=source, file="", bytes_done=present, bytes_total=total if total is not None else present,
            files_done=len(files), files_total=len(files), resumed_from=present,
        ))
        return snapshot
    if hub_offline():
        raise offline_error(source + (f"@{listing.revision}" if listing.revision else ""))
    request = {
        "repo": listing.repo, "commit": listing.commit, "revision": listing.revision, "endpoint": hub_endpoint(),
        "cache_dir": str(cache_dir), "chunk_bytes": chunk_bytes, "parent_pid": os.getpid(),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
    }
    reporter = _ProgressThrottle(source, on_progress)
    result = await _run_child(request, reporter)
    return Path(result)


def _wanted(listing: HubListing, paths: list[str]) -> list[HubFile]:
    unknown = [p for p in paths if listing.file(p) is None]
    if unknown:
        raise HubError(
            "file_not_found",
            f"hf:{listing.repo} at commit {listing.commit[:12]} has no file {', '.join(map(repr, unknown))}. Name "
            "files the repo has, or leave out the file name and berth chooses.",
        )
    return [listing.file(p) for p in dict.fromkeys(paths)]


def child_environment() -> dict[str, str]:
    """The worker's environment (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, proxies...), quiet and Xet-free."""
    env = dict(os.environ)
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # progress comes as JSON lines on stdout
    env["HF_HUB_DISABLE_XET"] = "1"  # plain HTTP: resumable with Range, and what any hub mirror serves
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # no extra request to the hub from each child
    env["PYTHONUNBUFFERED"] = "1"
    package_root = str(Path(__file__).resolve().parents[2])  # so that `-m berth.models.hub_fetch` imports
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


async def _run_child(request: dict, reporter: "_ProgressThrottle") -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "berth.models.hub_fetch", json.dumps(request),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_environment(), start_new_session=True,
        # no preexec_fn (Python code between fork and exec can deadlock in a threaded worker): the
        # child asks for SIGKILL at its parent's death itself (process_lifetime.exit_with_parent),
        # so a worker killed by SIGKILL takes its download with it
    )
    stderr_tail: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
    drain = asyncio.create_task(_collect(process.stderr, stderr_tail))
    outcome: dict = {}
    try:
        async for raw in process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                stderr_tail.append(raw.decode(errors="replace").rstrip())
                continue
            if event.get("event") == "progress":
                reporter.report(event)
            elif event.get("event") in ("done", "error"):
                outcome = event
        code = await process.wait()
        await drain
    finally:
        if process.returncode is None:  # cancelled (a stopped deployment), or the parent failed
            _kill_group(process.pid)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(process.wait())
            drain.cancel()
    if outcome.get("event") == "done" and code == 0:
        reporter.finish()
        return outcome["snapshot"]
    if outcome.get("event") == "error":
        raise HubError(outcome.get("kind", "network"), outcome.get("message", "the download failed"))
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    last = next((line for line in reversed(stderr_tail) if line.strip()), "")
    raise HubError(
        "network",
        f"The download of hf:{request['repo']} stopped unexpectedly ({how}{': ' + last if last else ''}). "
        "Deploy again: it resumes where it stopped.",
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the child leads its own session: the group is the child and its own


async def _collect(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    async for raw in stream:
        tail.append(raw.decode(errors="replace").rstrip())


class _ProgressThrottle:
    """Turns the child's progress lines into DownloadProgress calls, at most every PROGRESS_EVERY_S."""

    def __init__(self, source: str, on_progress: Callable[[DownloadProgress], None]):
        self.source = source
        self.on_progress = on_progress
        self.last_sent = float("-inf")
        self.latest: DownloadProgress | None = None

    def report(self, event: dict) -> None:
        self.latest = DownloadProgress(
            source=self.source, file=event.get("file", ""), bytes_done=event["bytes_done"],
            bytes_total=event.get("bytes_total"), files_done=event["files_done"],
            files_total=event["files_total"], resumed_from=event.get("resumed_from", 0),
        )
        now = time.monotonic()
        if now - self.last_sent >= PROGRESS_EVERY_S:
            self.last_sent = now
            self.on_progress(self.latest)

    def finish(self) -> None:
        """The last word: everything fetched (sent even if the previous call was just now)."""
        if self.latest is not None:
            done = self.latest.model_copy(update={
                "bytes_done": self.latest.bytes_total or self.latest.bytes_done,
                "files_done": self.latest.files_total,
            })
            self.on_progress(done)
