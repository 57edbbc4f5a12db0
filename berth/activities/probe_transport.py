"""A small HTTP/1.1 transport for health probes: one short request per connection, asyncio streams.

Probes ask plain-HTTP endpoints on this node (an engine's port, the gateway) for a status code
and at most a small body. httpx's default transport (httpcore over anyio) spent most of the
worker's probing CPU on its own bookkeeping (py-spy, 536 supervised engines: ~30% of the worker's
samples in the probes, the larger part in anyio's connect_tcp and httpcore's pool), for requests
that take ~0.1 ms on loopback. This one writes the request, reads the answer and closes, and it
raises httpx's own exceptions, so the engines' probe code (engines/*.probe) is the same whichever
transport the client has.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1 << 20  # a health answer is a few bytes; more is read no further


class ProbeTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"probes speak plain HTTP, not {request.url.scheme}", request=request)
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(request.url.host, request.url.port or 80), timeouts.get("connect")
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {request.url.netloc.decode()}", request=request) from None
        except OSError as error:
            raise httpx.ConnectError(str(error), request=request) from None
        try:
            writer.write(_request_bytes(request, body))
            status, headers, content = await asyncio.wait_for(_read_response(reader), timeouts.get("read"))
        except asyncio.TimeoutError:
            raise httpx.ReadTimeout(f"no answer from {request.url.netloc.decode()}", request=request) from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            raise httpx.RemoteProtocolError(f"malformed answer: {error}", request=request) from None
        except OSError as error:
            raise httpx.ReadError(str(error), request=request) from None
        finally:
            writer.close()
        return httpx.Response(status, headers=headers, content=content, request=request)


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    lines = [f"{request.method} {request.url.raw_path.decode('ascii')} HTTP/1.1"]
    skip = {"connection", "accept-encoding", "content-length", "transfer-encoding"}
    lines += [f"{name}: {value}" for name, value in request.headers.items() if name.lower() not in skip]
    lines += ["Connection: close", "Accept-Encoding: identity"]  # the body arrives as sent
    if body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD_BYTES:
        raise ValueError("response head too large")
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 answer: {status_line[:40]!r}")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines if ":" in line]
    fields = {name.lower(): value for name, value in headers}
    if "chunked" in fields.get("transfer-encoding", "").lower():
        content = await _read_chunked(reader)
        headers = [(n, v) for n, v in headers if n.lower() != "transfer-encoding"]
    elif "content-length" in fields:
        content = await reader.readexactly(min(int(fields["content-length"]), MAX_BODY_BYTES))
    else:  # Connection: close delimits it
        content = await reader.read(MAX_BODY_BYTES)
    return int(status), headers, content


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    content = bytearray()
    while len(content) < MAX_BODY_BYTES:
        size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            with contextlib.suppress(asyncio.IncompleteReadError):
                await reader.readline()  # the blank line after the last chunk (trailers ignored)
            break
        content += await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF
    return bytes(content)
