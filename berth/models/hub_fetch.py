"""The child process that downloads hub files into huggingface_hub's cache, resumably.

    python -m berth.models.hub_fetch '{"repo": ..., "commit": ..., "revision": ..., "endpoint": ...,
                                       "cache_dir": ..., "chunk_bytes": ..., "parent_pid": ...,
                                       "files": [{"path", "size", "sha256"}]}'

Prints JSON lines on stdout: {"event": "progress", file, bytes_done, bytes_total, files_done, files_total,
resumed_from}, then {"event": "done", "snapshot": path} or {"event": "error", "kind", "message"}.

Why not hf_hub_download: in huggingface_hub 2.4.0 each download writes to a process-unique temporary
file that is deleted on failure and never reused, so a stopped download starts over. Here the bytes go
to `blobs/<etag>.incomplete`, a fixed name, and the next run asks for the rest (`Range: bytes=N-`).
Everything else is huggingface_hub's: the HEAD that gives etag, size and commit (get_hf_file_metadata),
the GET with its retries that resume after a dropped connection (http_get), the token and headers, the
offline switch, the per-blob lock file, and the cache layout (blobs/, snapshots/<commit>/ links, refs/).
It runs in its own process group, which the parent kills when the deployment is stopped, and dies
with its parent (`parent_pid`; killed by SIGKILL when it dies, even by SIGKILL itself).
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from berth.common.process_lifetime import exit_with_parent
from berth.models.hub_errors import HubError, hub_error_from

PROGRESS_EVERY_S = 0.2
HASH_CHUNK = 1 << 20


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Progress:
    """Bytes on disk over all files: those complete, plus the one being written."""

    def __init__(self, total: int | None, files_total: int):
        self.total = total
        self.files_total = files_total
        self.files_done = 0
        self.complete_bytes = 0
        self.current_file = ""
        self.current_bytes = 0
        self.resumed_from = 0
        self.last_sent = float("-inf")

    def send(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_sent < PROGRESS_EVERY_S:
            return
        self.last_sent = now
        emit({
            "event": "progress", "file": self.current_file, "bytes_done": self.complete_bytes + self.current_bytes,
            "bytes_total": self.total, "files_done": self.files_done, "files_total": self.files_total,
            "resumed_from": self.resumed_from,
        })

    def file_complete(self, size: int) -> None:
        self.complete_bytes += size
        self.current_bytes = 0
        self.files_done += 1
        self.send(force=True)


class CountingFile:
    """The file http_get writes into, telling Progress its size as it grows (or is reset by a 200)."""

    def __init__(self, raw, progress: Progress):
        self.raw = raw
        self.progress = progress
        self.size = raw.tell()

    def write(self, data: bytes) -> int:
        written = self.raw.write(data)
        self.size += len(data)
        self.progress.current_bytes = self.size
        self.progress.send()
        return written

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self.raw.flush()
        self.size = self.raw.truncate(size)
        self.progress.current_bytes = self.size
        return self.size

    def flush(self) -> None:
        self.raw.flush()


def fetch(request: dict, current: dict) -> Path:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    constants.DOWNLOAD_CHUNK_SIZE = int(request["chunk_bytes"])  # http_get writes (and reports) chunk by chunk
    repo, commit, endpoint = request["repo"], request["commit"], request["endpoint"]
    folder = "models--" + repo.replace("/", "--")
    storage = Path(request["cache_dir"]) / folder
    snapshot = storage / "snapshots" / commit
    files = request["files"]

    # 1. what is there already, and where the rest comes from (a HEAD per missing file)
    plans = []
    present = 0
    for item in files:
        current["file"] = item["path"]
        pointer = snapshot / item["path"]
        if pointer.is_file():
            plans.append((item, pointer, None))
            present += pointer.stat().st_size
            continue
        url = hf_hub_url(repo, item["path"], revision=commit, endpoint=endpoint)
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
        if not metadata.etag:
            raise HubError("network", f"the hub at {endpoint} gave no ETag for {item['path']}; is HF_ENDPOINT a hub?")
        size = metadata.size if metadata.size is not None else item["size"]
        blob = storage / "blobs" / metadata.etag
        partial = _incomplete(blob)
        present += blob.stat().st_size if blob.is_file() else (partial.stat().st_size if partial.is_file() else 0)
        plans.append((item | {"size": size}, pointer, (metadata, blob)))
    sizes = [plan[0]["size"] for plan in plans]
    progress = Progress(sum(sizes) if None not in sizes else None, len(plans))
    progress.resumed_from = present
    progress.send(force=True)

    # 2. fetch what is missing, one file at a time
    headers = build_hf_headers()
    for item, pointer, remote in plans:
        current["file"] = progress.current_file = item["path"]
        if remote is None:
            progress.file_complete(pointer.stat().st_size)
            continue
        metadata, blob = remote
        # The resolve URL each time, not the CDN location the HEAD saw: a signed URL expires, and the
        # HTTP client follows the hub's redirect (dropping the token when it leaves the hub's host).
        url = hf_hub_url(repo, item["path"], revision=commit, endpoint=endpoint)
        lock = Path(request["cache_dir"]) / ".locks" / folder / f"{metadata.etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        blob.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):
            if not blob.is_file():
                _download_blob(http_get, url, headers, blob, item, metadata.etag, progress)
            _link(blob, pointer)
        progress.file_complete(blob.stat().st_size)
    _record_ref(storage, request.get("revision"), commit)
    return snapshot


def _incomplete(blob: Path) -> Path:
    return blob.with_name(blob.name + ".incomplete")


def _download_blob(http_get, url: str, headers: dict, blob: Path, item: dict, etag: str, progress: Progress) -> None:
    partial = _incomplete(blob)
    size = item["size"]
    with open(partial, "ab") as raw:
        if size is not None and raw.tell() > size:  # not a prefix of this file: start over
            raw.truncate(0)
            raw.seek(0, os.SEEK_END)
        target = CountingFile(raw, progress)
        progress.current_bytes = target.size
        http_get(url, target, resume_size=target.size, headers=headers, expected_size=size,
                 displayed_filename=item["path"])
    expected = item.get("sha256") or (etag if len(etag) == 64 else None)
    if expected and _sha256(partial) != expected.lower():
        partial.unlink(missing_ok=True)
        raise HubError(
            "network",
            f"{item['path']} arrived damaged (its sha256 is not the hub's); berth removed it. Deploy again to "
            "fetch it anew.",
        )
    os.replace(partial, blob)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _link(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<path> -> ../../blobs/<etag>, relative as huggingface_hub makes it."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    os.symlink(os.path.relpath(blob, pointer.parent), pointer)


def _record_ref(storage: Path, revision: str | None, commit: str) -> None:
    """refs/<revision> = commit, so that the revision resolves offline (huggingface_hub reads it too)."""
    revision = revision or "main"
    if revision == commit:
        return
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    temporary = ref.with_name(ref.name + f".{os.getpid()}.tmp")
    temporary.write_text(commit)
    os.replace(temporary, ref)


def main(argv: list[str]) -> int:
    request = json.loads(argv[1])
    if request.get("parent_pid"):
        exit_with_parent(int(request["parent_pid"]))  # a partial blob is safe to drop at any point
    current = {"file": None}
    try:
        snapshot = fetch(request, current)
    except Exception as error:
        failure = hub_error_from(error, request["repo"], request.get("revision"), current["file"])
        emit({"event": "error", "kind": failure.kind, "message": failure.message})
        return 1
    emit({"event": "done", "snapshot": str(snapshot)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
