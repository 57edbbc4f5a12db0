"""The xllamacpp launcher as a supervisor sees it: a subprocess and a log file."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from berth.testing.tiny_gguf import write_garbage_gguf, write_tiny_gguf

HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def launcher(model: Path, port: int, log_path: Path) -> Iterator[subprocess.Popen]:
    argv = [
        sys.executable, "-m", "berth.engines.xllamacpp_server",
        "--model", str(model), "--host", HOST, "--port", str(port),
        "--ctx-size", "512", "--threads", "1", "--alias", "tiny",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT_S)


def poll_health(client: httpx.Client, proc: subprocess.Popen, port: int) -> list[str | int]:
    """Poll /health until 200; return what was seen, e.g. ['refused', 503, 200]."""
    seen: list[str | int] = []
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"launcher exited early with {proc.returncode}"
        try:
            status: str | int = client.get(f"http://{HOST}:{port}/health").status_code
        except httpx.TransportError:
            status = "refused"
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == 200:
            return seen
        time.sleep(0.01)
    pytest.fail(f"/health not 200 within {READY_TIMEOUT_S}s; saw {seen}")


def wait_exit(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"launcher still running {EXIT_TIMEOUT_S}s later")


def test_serves_tiny_model_and_stops_on_sigterm(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    port = free_port()
    log_path = tmp_path / "engine.log"
    # Build the client first: its setup (CA bundle) can outlast the launcher's start.
    with httpx.Client(timeout=30.0) as client, launcher(model, port, log_path) as proc:
        seen = poll_health(client, proc, port)
        assert seen[-1] == 200
        assert len(seen) >= 2 and set(seen[:-1]) <= {"refused", 503}, seen

        response = client.post(
            f"http://{HOST}:{port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 8},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        message = body["choices"][0]["message"]
        assert message["role"] == "assistant"
        assert isinstance(message["content"], str)
        assert body["model"] == "tiny"
        assert 0 < body["usage"]["completion_tokens"] <= 8

        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc) == 0
    log = log_path.read_text(errors="replace")
    assert "srv          init: model loaded" in log
    assert "berth launcher: stopped" in log


def test_garbage_gguf_exits_nonzero_with_llama_error(tmp_path: Path) -> None:
    model = write_garbage_gguf(tmp_path / "garbage.gguf")
    log_path = tmp_path / "engine.log"
    with launcher(model, free_port(), log_path) as proc:
        assert wait_exit(proc) == 1
    log = log_path.read_text(errors="replace")
    assert "gguf_init_from_reader: invalid magic characters" in log
    assert f"llama_model_load: error loading model: llama_model_loader: failed to load model from {model}" in log
    assert f"berth launcher: model failed to load: {model}" in log


def test_missing_model_exits_nonzero_naming_the_path(tmp_path: Path) -> None:
    model = tmp_path / "absent" / "missing.gguf"
    log_path = tmp_path / "engine.log"
    with launcher(model, free_port(), log_path) as proc:
        assert wait_exit(proc) == 1
    log = log_path.read_text(errors="replace")
    assert f"failed to open GGUF file '{model}' (No such file or directory)" in log
    assert f"berth launcher: model failed to load: {model}" in log


def test_a_port_with_closed_connections_in_time_wait_is_not_taken_a_listened_one_is():
    """After a model that failed to load, the launcher tells a port in use from a load failure: the
    readiness probes' closed connections (TIME_WAIT) on the port are not "in use"."""
    from berth.engines.xllamacpp_server import port_is_taken

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert port_is_taken(HOST, port)
    client = socket.create_connection((HOST, port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection stays in TIME_WAIT
    time.sleep(0.1)
    client.close()
    listener.close()
    assert not port_is_taken(HOST, port)
