"""A fake Hugging Face hub: a real HTTP server on 127.0.0.1 that answers the part of the Hub API that
huggingface_hub uses to list a repo and download its files, so that tests drive the real huggingface_hub
(in-process, and in berth's download child process) against it. Point it there with HF_ENDPOINT=fake.url.

    with FakeHub({"org/repo": {"model-q4_k_m.gguf": b"...", "config.json": b"{}"}},
                 revisions={"org/repo": {"v1.0": {"model-q4_k_m.gguf": b"older"}}}) as hub:
        hub.throttle("org/repo", "model-q4_k_m.gguf", bytes_per_s=50_000)   # slow enough to cancel mid-way
        hub.drop_connection("org/repo", "model-q4_k_m.gguf", after_bytes=1000)  # the next GET breaks off
        ...                                                                 # code under test
        hub.downloads("org/repo")            # the files GET'd, in order
        hub.requests_to("GET", "/org/repo/resolve/.*")[0].range            # e.g. "bytes=4096-"

Answered:
  GET  /api/models/{repo}                      model info of the default branch ("main")
  GET  /api/models/{repo}/revision/{rev}       ... of a branch, tag or commit; ?blobs=True adds each
                                               sibling's size, blobId and lfs {sha256, size, pointerSize}
  HEAD /{repo}/resolve/{rev}/{path}            what hf_hub_download / get_hf_file_metadata read:
  GET  /{repo}/resolve/{rev}/{path}              X-Repo-Commit, ETag (LFS: the sha256, else the git blob
                                               sha1), X-Linked-Etag and X-Linked-Size (LFS files),
                                               Content-Length, Accept-Ranges; GET with `Range: bytes=N-`
                                               answers 206 with Content-Range (416 past the end)
  GET  /api/agent-harnesses                    huggingface_hub's telemetry registry: empty
  HEAD/GET /_cdn/{repo}/{commit}/{path}        with cdn_redirects=True, where LFS files are redirected
                                               (302 from resolve, carrying the X-Linked-* headers)
Errors as the hub sends them (huggingface_hub maps them by X-Error-Code): an unknown repo 404 RepoNotFound,
an unknown revision 404 RevisionNotFound, an unknown file 404 EntryNotFound (with X-Repo-Commit).
LFS files are served directly (200), or with cdn_redirects=True redirected to another host name of the same
server, as huggingface.co does. Nothing advertises Xet, so huggingface_hub uses plain HTTP.
"""

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_REVISION = "main"
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".model", ".png")
LFS_MIN_SIZE = 1 << 20
SEND_CHUNK = 4096
RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
MODEL_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)??)(?:/revision/(?P<rev>[^/]+))?$")
CDN = re.compile(r"^/_cdn/(?P<repo>.+)/(?P<commit>[0-9a-f]{40})/(?P<path>.+)$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class SeenRequest:
    method: str
    path: str  # as sent, percent-encoded, without the query
    range: str | None  # the Range header
    query: dict[str, list[str]]
    authorization: str | None = None  # the Authorization header (a token must not leave the hub for the CDN)


@dataclass(frozen=True)
class FakeFile:
    path: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_blob_id(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def lfs(self) -> bool:
        return self.path.lower().endswith(LFS_SUFFIXES) or len(self.data) >= LFS_MIN_SIZE

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_blob_id


@dataclass(frozen=True)
class FakeRevision:
    name: str
    commit: str
    files: dict[str, FakeFile]


def _commit_of(repo: str, name: str, files: dict[str, bytes]) -> str:
    digest = hashlib.sha1(f"{repo}@{name}".encode())
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


class FakeHub:
    def __init__(
        self,
        repos: dict[str, dict[str, bytes]],
        revisions: dict[str, dict[str, dict[str, bytes]]] | None = None,
        cdn_redirects: bool = False,
    ) -> None:
        """`repos`: each repo's files on its default branch ("main"); `revisions`: more branches/tags.
        `cdn_redirects`: LFS files are answered, as on huggingface.co, with a 302 to another host (here
        `localhost` instead of `127.0.0.1`, the same server) that serves the bytes."""
        self.cdn_redirects = cdn_redirects
        self.repos: dict[str, dict[str, FakeRevision]] = {}
        for repo, files in repos.items():
            named = {DEFAULT_REVISION: files, **(revisions or {}).get(repo, {})}
            self.repos[repo] = {
                name: FakeRevision(
                    name, _commit_of(repo, name, content), {p: FakeFile(p, d) for p, d in content.items()}
                )
                for name, content in named.items()
            }
        self.requests: list[SeenRequest] = []
        self.lock = threading.Lock()
        self._throttles: dict[tuple[str, str], float] = {}
        self._drops: dict[tuple[str, str], list[int]] = {}  # (repo, path) -> [after_bytes, times left]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.stopped = False

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped = True  # also ends throttled transfers in flight
        self.server.shutdown()
        self.server.server_close()

    # --- what tests set and look at ---------------------------------------------------------------

    def commit(self, repo: str, revision: str = DEFAULT_REVISION) -> str:
        return self.repos[repo][revision].commit

    def file(self, repo: str, path: str, revision: str = DEFAULT_REVISION) -> FakeFile:
        return self.repos[repo][revision].files[path]

    def throttle(self, repo: str, path: str, bytes_per_s: float | None) -> None:
        """Serve this file's bytes at about `bytes_per_s` (None: full speed again)."""
        with self.lock:
            if bytes_per_s is None:
                self._throttles.pop((repo, path), None)
            else:
                self._throttles[(repo, path)] = float(bytes_per_s)

    def drop_connection(self, repo: str, path: str, after_bytes: int, times: int = 1) -> None:
        """The next `times` GETs of this file hang up after `after_bytes` of the body (a network fault)."""
        with self.lock:
            self._drops[(repo, path)] = [after_bytes, times]

    def requests_to(self, method: str, pattern: str) -> list[SeenRequest]:
        """Requests whose method matches and whose path fully matches the regex `pattern`."""
        with self.lock:
            seen = list(self.requests)
        return [r for r in seen if r.method == method and re.fullmatch(pattern, r.path)]

    def downloads(self, repo: str, method: str = "GET") -> list[str]:
        """The repo files requested with `method` (GET: downloaded, HEAD: looked at), in order."""
        found = []
        for request in self.requests_to(method, r"/.+/resolve/.+"):
            match = RESOLVE.match(request.path)
            if match and unquote(match["repo"]) == repo:
                found.append(unquote(match["path"]))
        return found

    def clear_requests(self) -> None:
        with self.lock:
            self.requests.clear()

    # --- the API ----------------------------------------------------------------------------------

    def revision(self, repo: str, name: str) -> FakeRevision | None:
        revisions = self.repos[repo]
        if name in revisions:
            return revisions[name]
        return next((r for r in revisions.values() if r.commit == name), None)

    def model_info(self, repo: str, revision: FakeRevision, with_blobs: bool) -> dict:
        siblings = []
        for file in revision.files.values():
            sibling: dict = {"rfilename": file.path}
            if with_blobs:
                sibling.update(blobId=file.git_blob_id, size=len(file.data))
                if file.lfs:
                    sibling["lfs"] = {"sha256": file.sha256, "size": len(file.data), "pointerSize": 134}
            siblings.append(sibling)
        return {
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
            "author": repo.split("/")[0] if "/" in repo else None, "sha": revision.commit,
            "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
            "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings,
        }

    def throttle_of(self, repo: str, path: str) -> float | None:
        with self.lock:
            return self._throttles.get((repo, path))

    def take_drop(self, repo: str, path: str) -> int | None:
        with self.lock:
            drop = self._drops.get((repo, path))
            if not drop or drop[1] <= 0:
                return None
            drop[1] -= 1
            return drop[0]


def _error(code: str, message: str, status: int = 404, commit: str | None = None):
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    if commit:
        headers["X-Repo-Commit"] = commit
    return status, headers, json.dumps({"error": message}).encode()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            seen = SeenRequest(
                self.command, parts.path, self.headers.get("Range"), parse_qs(parts.query),
                self.headers.get("Authorization"),
            )
            with hub.lock:
                hub.requests.append(seen)
            try:
                self._answer(parts.path, parse_qs(parts.query))
            except (BrokenPipeError, ConnectionResetError):  # the client went away (e.g. killed)
                self.close_connection = True

        do_GET = do_HEAD = _serve

        def _answer(self, path: str, query: dict) -> None:
            if path == "/api/agent-harnesses":
                return self._send(200, {"Content-Type": "application/json"},
                                  json.dumps({"standardEnvVars": [], "harnesses": {}}).encode())
            match = MODEL_INFO.match(path)
            if match:
                return self._model_info(unquote(match["repo"]), unquote(match["rev"] or DEFAULT_REVISION), query)
            match = CDN.match(path)
            if match:
                return self._cdn(unquote(match["repo"]), match["commit"], unquote(match["path"]))
            match = RESOLVE.match(path)
            if match:
                return self._resolve(unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"]))
            self._send(*_error("NotFound", f"no such page: {path}"))

        def _revision_or_error(self, repo: str, name: str):
            """The revision `name` of `repo`; None once the hub's error for a missing one is sent."""
            if repo not in hub.repos:
                self._send(*_error("RepoNotFound", "Repository not found"))
                return None
            revision = hub.revision(repo, name)
            if revision is None:
                self._send(*_error("RevisionNotFound", f"Invalid rev id: {name}"))
            return revision

        def _model_info(self, repo: str, name: str, query: dict) -> None:
            revision = self._revision_or_error(repo, name)
            if revision is None:
                return
            with_blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            body = json.dumps(hub.model_info(repo, revision, with_blobs)).encode()
            self._send(200, {"Content-Type": "application/json"}, body)

        def _resolve(self, repo: str, name: str, path: str) -> None:
            revision = self._revision_or_error(repo, name)
            if revision is None:
                return
            file = revision.files.get(path)
            if file is None:
                message = f'{path} does not exist on "{name}"'
                return self._send(*_error("EntryNotFound", message, commit=revision.commit))
            size = len(file.data)
            headers = {
                "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                "X-Repo-Commit": revision.commit, "ETag": f'"{file.etag}"',
            }
            if file.lfs:
                headers.update({"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(size)})
                if hub.cdn_redirects:
                    location = f"http://localhost:{hub.port}/_cdn/{quote(repo)}/{revision.commit}/{quote(path)}?sig=x"
                    return self._send(302, headers | {"Location": location}, b"")
            self._content(file, headers, repo, path)

        def _cdn(self, repo: str, commit: str, path: str) -> None:
            revision = hub.revision(repo, commit) if repo in hub.repos else None
            file = revision.files.get(path) if revision else None
            if file is None:
                return self._send(404, {"Content-Type": "text/plain"}, b"NoSuchKey")
            self._content(file, {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}, repo, path)

        def _content(self, file: FakeFile, headers: dict, repo: str, path: str) -> None:
            """The file's bytes (a HEAD: their headers), all of them or the Range asked for."""
            size = len(file.data)
            start, end = 0, size - 1
            wanted = self.headers.get("Range")
            status = 200
            if wanted:
                found = RANGE.match(wanted.strip())
                if found:
                    start = int(found[1])
                    end = min(int(found[2]), size - 1) if found[2] else size - 1
                    if start >= size:
                        return self._send(416, {"Content-Range": f"bytes */{size}"}, b"")
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            body = file.data[start:end + 1]
            if self.command == "HEAD":
                return self._send(status, headers, b"", length=len(body))
            self._stream(status, headers, body, repo, path)

        def _stream(self, status: int, headers: dict, body: bytes, repo: str, path: str) -> None:
            rate = hub.throttle_of(repo, path)
            drop_after = hub.take_drop(repo, path)
            self._head(status, headers, len(body))
            sent = 0
            started = time.monotonic()
            while sent < len(body) and not hub.stopped:
                piece = body[sent:sent + SEND_CHUNK]
                if drop_after is not None and sent + len(piece) > drop_after:
                    piece = piece[:max(drop_after - sent, 0)]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    self._hang_up()
                    return
                self.wfile.write(piece)
                sent += len(piece)
                rate = hub.throttle_of(repo, path)
                if rate:
                    delay = started + sent / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            if sent < len(body):
                self._hang_up()

        def _hang_up(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _head(self, status: int, headers: dict, length: int) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _send(self, status: int, headers: dict, body: bytes, length: int | None = None) -> None:
            self._head(status, headers, len(body) if length is None else length)
            if body and self.command != "HEAD":
                self.wfile.write(body)

    return Handler
