"""The probes' HTTP client against real local servers: what the engines' probe code relies on
(status codes, headers sent, bodies read, and httpx's exceptions for each way a probe can fail)."""

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from berth.node.probe_transport import ProbeClient


class Engine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b'{"status":', b'"ok"}'):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        code = 503 if self.path == "/loading" else 200
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization")}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def engine_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_status_codes_headers_and_bodies(engine_url):
    probe = ProbeClient(headers=(("Authorization", "Bearer t"),))
    ready = await probe.get(engine_url + "/health?full=1")
    assert ready.status_code == 200 and ready.json() == {"path": "/health?full=1", "auth": "Bearer t"}
    assert (await probe.get(engine_url + "/loading")).status_code == 503
    chunked = await probe.get(engine_url + "/chunked")
    assert chunked.json() == {"status": "ok"} and "transfer-encoding" not in chunked.headers
    echoed = await probe.post(engine_url + "/v1/chat/completions", json={"max_tokens": 1})
    assert echoed.status_code == 200 and echoed.json() == {"max_tokens": 1}


async def test_answers_split_across_reads_and_closed_connections():
    """A head and body that arrive in pieces, a body delimited by the connection closing, a
    chunked body whose chunks come one by one, and a body cut short (an error, not a short answer)."""
    answers = {
        b"/pieces": [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nhe", b"llo"],
        b"/until-close": [b"HTTP/1.0 200 OK\r\n\r\n", b"all of it"],
        b"/chunks": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b"2\r\nde\r\n", b"0\r\n\r\n"],
        b"/cut": [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
    }

    async def serve(reader, writer):
        path = (await reader.readuntil(b"\r\n\r\n")).split(b" ")[1]
        for part in answers[path]:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    probe = ProbeClient()
    try:
        assert (await probe.get(base + "/pieces")).content == b"hello"
        assert (await probe.get(base + "/until-close")).content == b"all of it"
        assert (await probe.get(base + "/chunks")).content == b"abcde"
        with pytest.raises(httpx.RemoteProtocolError):
            await probe.get(base + "/cut")
    finally:
        server.close()


async def test_a_closed_port_is_a_connect_error():
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(httpx.ConnectError):
            await ProbeClient().get(f"http://127.0.0.1:{port}/health")


async def test_a_silent_engine_is_a_read_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts connections (the kernel does) and never answers
    try:
        probe = ProbeClient(connect_timeout_s=1.0, read_timeout_s=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.ReadTimeout):
            await probe.get(f"http://127.0.0.1:{listener.getsockname()[1]}/health")
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        listener.close()


def replying(answer: bytes):
    """A connection handler that reads one request head, writes `answer` and closes."""

    async def reply(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    return reply


async def test_garbage_is_a_protocol_error():
    server = await asyncio.start_server(replying(b"SSH-2.0-OpenSSH\r\n\r\n"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            await ProbeClient().get(f"http://127.0.0.1:{port}/health")
    finally:
        server.close()


async def test_only_plain_http():
    with pytest.raises(httpx.UnsupportedProtocol):
        await ProbeClient().get("https://127.0.0.1:1/health")


async def test_an_ipv6_literal_is_reached():
    try:
        server = await asyncio.start_server(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        port = server.sockets[0].getsockname()[1]
        assert (await ProbeClient().get(f"http://[::1]:{port}/health")).content == b"ok"
    finally:
        server.close()
