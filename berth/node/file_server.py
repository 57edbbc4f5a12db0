"""The node's file server: the model files under this node's model roots, for the other nodes of
the cluster to copy (a deployment's `NODE:/path`; berth.node.file_copy is the copying side).

It runs inside the worker (stdlib asyncio streams: no web framework in the worker's memory), bound
to 127.0.0.1:<BERTH_FILES_PORT>, and is reached by peers only through this node's gateway, at
`/_berth/files/<absolute path>`, through a router of its own file ($BERTH_HOME/routes/
_berth-files.yml) whose rule requires the X-Berth-Cluster-Token header with this node's cluster
token; any other request under that prefix reaches the server with its path replaced (it answers
401 without a token, 403 with a wrong one, and sees no path). The server checks the token itself
too, in constant time.

    HEAD /_berth/files/srv/models/q.gguf         200: Content-Length, ETag, X-Berth-Sha256
    GET  /_berth/files/srv/models/q.gguf         200, or 206 with `Range: bytes=N-` (If-Range: ETag)
    GET  /_berth/files/srv/models/qwen?info      {"kind": "folder", "files": [{"path", "size"}]}
                                                 ({"kind": "file", "size", "etag"} for a file)

What may be served: berth.node.file_access (inside the roots, links followed; never a secret).
"""

import asyncio
import hmac
import json
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import yaml

from berth.common.atomic_write import write_atomically
from berth.common.cluster_token import CLUSTER_TOKEN_HEADER, load_cluster_token
from berth.node.file_access import FileAccess, NotServed, Sha256Cache
from berth.node.route_table import STAGING_DIR
from berth.node.routes import GATEWAY_ENTRYPOINT, RULE_SAFE_TOKEN
from berth.settings import Settings

log = logging.getLogger(__name__)

FILES_PATH = "/_berth/files"
DENIED_PATH = "/_berth/denied"  # where the gateway sends a request without the right token
ROUTE_FILE = "_berth-files.yml"
ROUTER = "_berth-files"
SHA256_HEADER = "X-Berth-Sha256"
INFO_QUERY = "info"
MAX_LINE = 16 * 1024
MAX_HEADERS = 100
IDLE_S = 60.0
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 416: "Range Not Satisfiable",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    version: str = "HTTP/1.1"

    @property
    def closes(self) -> bool:
        """The client asked to close after this answer (or speaks HTTP/1.0 without keep-alive)."""
        connection = self.headers.get("connection", "").lower()
        return connection == "close" or (self.version == "HTTP/1.0" and connection != "keep-alive")


@dataclass
class Served:
    """One answer, as the server's recent history keeps it (tests, and the log)."""

    method: str
    path: str
    status: int
    range: str | None = None
    offset: int = 0
    length: int = 0  # bytes of the file this answer carries (its body)
    complete: bool = False  # the body went out whole
    at: float = field(default_factory=time.time)


class FileServer:
    def __init__(self, settings: Settings, token: str, port: int | None = None, host: str = "127.0.0.1"):
        self.settings, self.host = settings, host
        self.port = settings.files_port if port is None else port
        self._token = token.encode()
        self.access = FileAccess(settings)
        self.hashes = Sha256Cache()
        self.served: deque[Served] = deque(maxlen=200)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> "FileServer":
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=2)
        except asyncio.TimeoutError:
            pass
        self._server = None

    # ---- HTTP/1.1, the little of it this needs ----------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                request = await asyncio.wait_for(_read_request(reader), IDLE_S)
                if request is None or not await self._answer(request, writer) or request.closes:
                    break
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection never takes the server down
            log.exception("file server: a request failed")
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _answer(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False: close the connection."""
        path, _, query = request.target.partition("?")
        if request.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers:
            await self._reply(writer, request, 400, "no request body here", keep=False)
            return False
        given = request.headers.get(CLUSTER_TOKEN_HEADER.lower())
        if given is None:
            await self._reply(writer, request, 401, f"this node serves files to the cluster's nodes only: send {CLUSTER_TOKEN_HEADER}")
            return True
        if not hmac.compare_digest(given.encode(), self._token):
            await self._reply(writer, request, 403, f"{CLUSTER_TOKEN_HEADER} is not this cluster's token")
            return True
        if request.method not in ("GET", "HEAD"):
            await self._reply(writer, request, 405, "GET or HEAD", extra={"Allow": "GET, HEAD"})
            return True
        if not path.startswith(FILES_PATH + "/"):
            await self._reply(writer, request, 404, "not a file path: /_berth/files/<absolute path>")
            return True
        asked = unquote(path[len(FILES_PATH):])
        try:
            if query == INFO_QUERY:
                await self._info(writer, request, asked)
            else:
                await self._file(writer, request, asked)
        except NotServed as refused:
            log.info("files: %s %r refused (%d): %s", request.method, asked[:300], refused.status, refused)
            await self._reply(writer, request, refused.status, str(refused))
        return True

    async def _info(self, writer: asyncio.StreamWriter, request: Request, asked: str) -> None:
        if await asyncio.to_thread(self.access.is_folder, asked):
            entries = await asyncio.to_thread(self.access.list_folder, asked)
            body = {"kind": "folder", "files": [{"path": e.path, "size": e.size} for e in entries]}
        else:
            served = await asyncio.to_thread(self.access.stat_file, asked)
            body = {"kind": "file", "size": served.size, "etag": served.etag}
        await self._reply(writer, request, 200, json.dumps(body), content_type="application/json",
                          path=f"{asked}?{INFO_QUERY}")

    async def _file(self, writer: asyncio.StreamWriter, request: Request, asked: str) -> None:
        served, fd = await asyncio.to_thread(self.access.open_file, asked)
        with os.fdopen(fd, "rb") as handle:
            headers = {"ETag": served.etag, "Accept-Ranges": "bytes"}
            if request.method == "HEAD":
                headers[SHA256_HEADER] = await self.hashes.sha256(served)
                self._head(writer, 200, served.size, headers)
                self.served.append(Served("HEAD", asked, 200, complete=True))
                await writer.drain()
                return
            offset, length, status = 0, served.size, 200
            wanted = request.headers.get("range")
            if_range = request.headers.get("if-range")
            match = RANGE.match(wanted.strip()) if wanted else None
            if match and (if_range is None or if_range == served.etag):
                offset = int(match.group(1))
                last = min(int(match.group(2)), served.size - 1) if match.group(2) else served.size - 1
                if offset >= served.size or last < offset:
                    await self._reply(writer, request, 416, f"the file has {served.size} bytes", path=asked,
                                      extra={"Content-Range": f"bytes */{served.size}"})
                    return
                length, status = last - offset + 1, 206
                headers["Content-Range"] = f"bytes {offset}-{last}/{served.size}"
            record = Served("GET", asked, status, wanted, offset, length)
            self.served.append(record)
            log.info("files: GET %r %d (%s bytes from %d) for %r", asked[:300], status, length, offset,
                     request.headers.get("x-forwarded-for", "?")[:100])
            self._head(writer, status, length, headers)
            await writer.drain()
            if length:
                await asyncio.get_running_loop().sendfile(writer.transport, handle, offset, length)
            record.complete = True

    def _head(self, writer: asyncio.StreamWriter, status: int, length: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Length: {length}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def _reply(self, writer: asyncio.StreamWriter, request: Request, status: int, text: str, *,
                     content_type: str = "text/plain; charset=utf-8", keep: bool = True, path: str | None = None,
                     extra: dict[str, str] | None = None) -> None:
        body = (text if text.endswith("\n") else text + "\n").encode()
        headers = {"Content-Type": content_type, **(extra or {})}
        if not keep:
            headers["Connection"] = "close"
        self._head(writer, status, len(body), headers)
        if request.method != "HEAD":
            writer.write(body)
        await writer.drain()
        self.served.append(Served(request.method, path or request.target[:300], status, complete=True))


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x request line")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n"):
            return Request(parts[0], parts[1], headers, parts[2])
        if not raw:
            return None
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ValueError("too many headers")


# ---- the gateway's route to it --------------------------------------------------------------------


def files_route(settings: Settings, token: str, port: int | None = None) -> dict:
    """Peers reach the file server through the gateway with the token in the router's rule; every
    other request under /_berth/files/ reaches it with its path replaced (401/403, no file)."""
    prefix = f"PathPrefix(`{FILES_PATH}/`)"
    service = {"loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{port or settings.files_port}"}]}}
    routers: dict = {}
    middlewares: dict = {}
    if RULE_SAFE_TOKEN.match(token):
        routers[ROUTER] = {"rule": f"{prefix} && Header(`{CLUSTER_TOKEN_HEADER}`, `{token}`)",
                           "entryPoints": [GATEWAY_ENTRYPOINT], "service": ROUTER, "priority": 1001}
        denied = f"{ROUTER}-denied"
        middlewares[denied] = {"replacePath": {"path": DENIED_PATH}}
        routers[denied] = {"rule": prefix, "entryPoints": [GATEWAY_ENTRYPOINT], "service": ROUTER,
                           "middlewares": [denied], "priority": 1000}
    else:  # a token no rule can hold (BERTH_CLUSTER_TOKEN set by hand): the server's check alone
        routers[ROUTER] = {"rule": prefix, "entryPoints": [GATEWAY_ENTRYPOINT], "service": ROUTER, "priority": 1001}
    http: dict = {"routers": routers, "services": {ROUTER: service}}
    if middlewares:
        http["middlewares"] = middlewares
    return {"http": http}


def route_path(settings: Settings) -> Path:
    return settings.routes_dir / ROUTE_FILE


def write_files_route(settings: Settings, token: str, port: int | None = None) -> Path:
    """$BERTH_HOME/routes/_berth-files.yml (0600: it holds the token), rewritten only on change."""
    path = route_path(settings)
    text = yaml.safe_dump(files_route(settings, token, port), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        write_atomically(path, text, tmp_dir=settings.routes_dir / STAGING_DIR)
    return path


def remove_files_route(settings: Settings) -> None:
    route_path(settings).unlink(missing_ok=True)


async def start_file_server(settings: Settings) -> FileServer | None:
    """The node's file server and its route, or None (logged why: no cluster token, port taken):
    the node then serves no files, and everything else works."""
    token = load_cluster_token(settings)
    if not token:
        remove_files_route(settings)
        log.warning("no cluster token (BERTH_CLUSTER_TOKEN or $BERTH_HOME/cluster-token): this node serves no "
                    "model files to other nodes (NODE:/path copies from it fail with 404)")
        return None
    try:
        server = await FileServer(settings, token).start()
    except OSError as error:
        remove_files_route(settings)
        log.error("the file server cannot listen on 127.0.0.1:%d (%s): set BERTH_FILES_PORT to a free port; "
                  "this node serves no model files to other nodes", settings.files_port, error)
        return None
    write_files_route(settings, token, server.port)
    log.info("file server on 127.0.0.1:%d, reached through the gateway at %s/", server.port, FILES_PATH)
    return server


async def stop_file_server(settings: Settings, server: FileServer | None) -> None:
    if server is not None:
        remove_files_route(settings)
        await server.stop()
