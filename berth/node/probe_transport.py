"""HTTP/1.1 for health probes: one short request per connection, on the event loop's own sockets.

Probes ask plain-HTTP endpoints on this node (an engine's port, the gateway) for a status code and at
most a small body, ~200 times a second with 1000 supervised deployments. What a probe of a stand-in
engine on loopback costs the worker's event loop (this machine, 1500 in a row, both in one run):
through httpx's client over asyncio streams (until round 8; httpx's default transport, httpcore
over anyio, was dearer still) 0.84-0.90 ms of CPU; this, the loop's sock_connect / sock_sendall /
sock_recv and a parse of the answer, 0.38-0.41 ms (a bare request with no parsing: 0.34-0.36).
py-spy on the worker during P5a's burst had put 22% of its busy samples in the probes. The engines' probe
code (engines/*.probe) calls `get` / `post` as it would on an httpx client and catches httpx's
exceptions, which this raises for each way a probe can fail.
"""

from __future__ import annotations

import asyncio
import functools
import json as jsonlib
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

CONNECT_TIMEOUT_S = 2.0  # a connect on loopback happens at once or is refused; the slack is for a loaded machine
READ_TIMEOUT_S = 5.0
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1 << 20  # a health answer is a few bytes; more is read no further
RECV_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProbeResponse:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    content: bytes = b""

    def json(self):
        return jsonlib.loads(self.content)


@dataclass(frozen=True)
class ProbeClient:
    """`get` and `post` for probes, with these headers on every request."""

    headers: tuple[tuple[str, str], ...] = ()
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S

    async def get(self, url: str) -> ProbeResponse:
        return await self.request("GET", url)

    async def post(self, url: str, json=None) -> ProbeResponse:
        body = b"" if json is None else jsonlib.dumps(json).encode()
        return await self.request("POST", url, body, ("Content-Type", "application/json"))

    async def request(self, method: str, url: str, body: bytes = b"", *extra: tuple[str, str]) -> ProbeResponse:
        host, port, target = _split(url)
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", *(f"{n}: {v}" for n, v in (*self.headers, *extra))]
        head += ["Connection: close", "Accept-Encoding: identity"]  # the body arrives as sent
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        return await _exchange(host, port, message, self.connect_timeout_s, self.read_timeout_s)


@functools.lru_cache(maxsize=8192)
def _split(url: str) -> tuple[str, int, str]:
    """(host, port, request target) of a plain-HTTP URL; probes ask the same few URLs again and again."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise httpx.UnsupportedProtocol(f"probes speak plain HTTP, not {url.split(':', 1)[0]!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, target


async def _exchange(host: str, port: int, message: bytes, connect_s: float, read_s: float) -> ProbeResponse:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)  # [::1] or not
    sock.setblocking(False)
    connected = False
    try:
        async with asyncio.timeout(connect_s) as deadline:  # one timer for both phases: it is moved, not remade
            await loop.sock_connect(sock, (host, port))
            connected = True
            deadline.reschedule(loop.time() + read_s)
            await loop.sock_sendall(sock, message)
            return await _read_response(loop, sock)
    except TimeoutError:
        if connected:
            raise httpx.ReadTimeout(f"no answer from {host}:{port}") from None
        raise httpx.ConnectTimeout(f"no connection to {host}:{port}") from None
    except ValueError as error:
        raise httpx.RemoteProtocolError(f"malformed answer: {error}") from None
    except OSError as error:
        raise (httpx.ReadError if connected else httpx.ConnectError)(str(error)) from None
    finally:
        sock.close()


async def _read_response(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ProbeResponse:
    data = bytearray()
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise ValueError("response head too large")
        chunk = await loop.sock_recv(sock, RECV_BYTES)
        if not chunk:
            raise ValueError("the connection closed before the answer's head ended")
        data += chunk
    status_line, *header_lines = data[:end].decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    if not version.startswith("HTTP/1.") or not status.isdigit():
        raise ValueError(f"not an HTTP/1 answer: {status_line[:40]!r}")
    headers = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    body = bytearray(data[end + 4:])
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = None if chunked or "content-length" not in headers else min(int(headers["content-length"]), MAX_BODY_BYTES)
    content = None
    while len(body) < MAX_BODY_BYTES + MAX_HEAD_BYTES:
        if chunked and (content := _dechunk(body)) is not None:
            break
        if length is not None and len(body) >= length:
            break
        chunk = await loop.sock_recv(sock, RECV_BYTES)
        if not chunk:  # Connection: close delimits what has no length
            if length is not None or chunked:
                raise ValueError("the connection closed in the middle of the body")
            break
        body += chunk
    if chunked:
        headers.pop("transfer-encoding", None)
        return ProbeResponse(int(status), headers, content or b"")
    return ProbeResponse(int(status), headers, bytes(body[:length] if length is not None else body[:MAX_BODY_BYTES]))


def _dechunk(body: bytearray) -> bytes | None:
    """The content of a chunked body, None while its last chunk has not arrived (trailers ignored)."""
    content, at = bytearray(), 0
    while True:
        line_end = body.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(body[at:line_end]).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return bytes(content)
        if line_end + 2 + size + 2 > len(body):
            return None
        content += body[line_end + 2:line_end + 2 + size]
        at = line_end + 2 + size + 2
