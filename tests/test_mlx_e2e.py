"""MLX end to end on this Linux machine: `mlx[cpu]` + `mlx-lm`, a tiny safetensors llama made here,
deployed through the real stack (Temporal, Traefik, worker) with engine="mlx", answering a chat
completion through the gateway; and the engine's probe against a real mlx_lm.server and against a
stub that loads forever."""

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from berth.domain.errors import ErrorCode
from berth.domain.pipeline import LaunchRequest
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import workflow_id
from berth.engines.base import Readiness
from berth.engines.mlx import MlxEngine
from berth.testing.harness import engine_processes, free_port, start_deployment, wait_for_status
from berth.testing.tiny_safetensors import write_tiny_safetensors

needs_mlx = pytest.mark.skipif(
    importlib.util.find_spec("mlx") is None or importlib.util.find_spec("mlx_lm") is None,
    reason="mlx / mlx-lm are not installed (pip install 'berth[mlx]'; make test installs it)",
)


@pytest.fixture(scope="session")
def tiny_safetensors(models_dir) -> Path:
    return write_tiny_safetensors(models_dir / "tiny-llama")


@pytest.fixture(scope="session")
def unknown_arch_safetensors(models_dir) -> Path:
    return write_tiny_safetensors(models_dir / "tiny-unknown", model_type="nosucharch")


@needs_mlx
def test_the_tiny_model_is_small(tiny_safetensors):
    names = sorted(path.name for path in tiny_safetensors.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert sum(path.stat().st_size for path in tiny_safetensors.iterdir()) < 600_000


def test_the_command():
    command = MlxEngine().command(
        LaunchRequest(instance_id="m-1", deployment="m", engine="mlx", model_path="/models/tiny", port=20001,
                      context_size=4096, engine_args=["--max-tokens", "64"], env={"A": "b"})
    )
    assert command.argv == [
        sys.executable, "-m", "mlx_lm.server", "--max-tokens", "64",
        "--model", "/models/tiny", "--host", "127.0.0.1", "--port", "20001",  # berth's last: they win
    ]
    assert command.env == {"PYTHONUNBUFFERED": "1", "A": "b", "HF_HUB_OFFLINE": "1"}


async def probes_until(engine: MlxEngine, base: str, wanted: Readiness, timeout_s: float = 60) -> list[Readiness]:
    seen: list[Readiness] = []
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=1.0)) as client:
        while time.monotonic() < deadline:
            readiness = await engine.probe(client, base)
            if not seen or seen[-1] is not readiness:
                seen.append(readiness)
            if readiness is wanted:
                return seen
            await asyncio.sleep(0.05)
    raise AssertionError(f"never {wanted.value}; saw {[r.value for r in seen]}")


async def serve(engine: MlxEngine, model: Path, port: int, tmp_path: Path) -> subprocess.Popen:
    command = engine.command(
        LaunchRequest(instance_id="p-1", deployment="p", engine="mlx", model_path=str(model), port=port)
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **command.env}
    return subprocess.Popen(command.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@needs_mlx
async def test_probe_starting_then_ready_against_a_real_server(tiny_safetensors, tmp_path):
    engine, port = MlxEngine(), free_port()
    server = await serve(engine, tiny_safetensors, port, tmp_path)
    try:
        seen = await probes_until(engine, f"http://127.0.0.1:{port}", Readiness.READY)
    finally:
        server.terminate()
        server.wait(10)
    assert seen[0] is Readiness.STARTING and seen[-1] is Readiness.READY
    assert Readiness.UNHEALTHY not in seen


async def test_probe_while_the_model_loads_and_after_it_was_ready():
    """Like mlx_lm.server: /health 200 at once, completions wait for the load (here: forever)."""
    posts: list[dict] = []

    class LoadingForever(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            time.sleep(1.0)  # the request waits in the generation queue

    server = ThreadingHTTPServer(("127.0.0.1", 0), LoadingForever)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        async with httpx.AsyncClient(timeout=0.3) as client:
            assert await MlxEngine().probe(client, base) is Readiness.LOADING
            assert posts == [{"prompt": "hi", "max_tokens": 1, "temperature": 0.0}]  # no "model" field
            assert await MlxEngine().probe(client, base, after_ready=True) is Readiness.READY
            assert len(posts) == 1  # supervise does not queue a generation behind the users'
    finally:
        server.shutdown()
        server.server_close()


@needs_mlx
async def test_probe_says_unhealthy_when_the_load_failed(unknown_arch_safetensors, tmp_path):
    engine, port = MlxEngine(), free_port()
    server = await serve(engine, unknown_arch_safetensors, port, tmp_path)
    try:
        seen = await probes_until(engine, f"http://127.0.0.1:{port}", Readiness.UNHEALTHY)
        assert server.poll() is None, "mlx_lm.server stays up after a failed load: only /health tells"
    finally:
        server.terminate()
        server.wait(10)
    assert Readiness.READY not in seen


@needs_mlx
async def test_deploy_mlx_end_to_end_through_the_gateway(stack, client, tiny_safetensors, name):
    started = time.monotonic()
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_safetensors), engine="mlx"))
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED, S.ERROR}, timeout_s=120)
    deployed_s = time.monotonic() - started
    assert state.status is S.DEPLOYED, state.error
    assert state.engine == "mlx"
    assert [t.status for t in state.transitions][:4] == [S.REQUESTED, S.DEPLOYING, S.INITIALIZING, S.DEPLOYED]

    response = stack.chat(name)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] >= 1
    [engine] = engine_processes(stack.home, name)
    assert engine.cmdline()[1:3] == ["-m", "mlx_lm.server"]
    print(f"mlx deployment DEPLOYED in {deployed_s:.2f} s")

    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal("stop")
    await handle.result()
    assert engine_processes(stack.home, name) == []


@needs_mlx
async def test_a_model_mlx_cannot_load_fails_at_once_with_its_log(stack, client, unknown_arch_safetensors, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(unknown_arch_safetensors), engine="mlx"))
    started = time.monotonic()
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED}, timeout_s=60)
    assert state.status is S.FAILED
    assert state.error.code is ErrorCode.MODEL_LOADING_FAILURE, state.error
    assert "Model type nosucharch not supported" in state.error.message
    assert time.monotonic() - started < 30  # not the 600 s startup budget
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal("stop")
    await handle.result()
