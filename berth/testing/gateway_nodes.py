"""Gateways of several nodes on one host, for the cluster routing tests and bench/gateway_hop.py.

Each node: its own $BERTH_HOME, node id, loopback address (127.0.0.3x) and gateway port; a real
Traefik started with berth's own static config (berth.worker.gateway) and gateway file; real
llama.cpp engines started through berth's launch code (berth.node.engine_launch); routes written
through the real configure_route activity, run with the node's environment. The API that the
gateways' forwardAuth asks is a stand-in process-local server running berth's own check
(berth.api.auth_check.AuthCheck) with an admin token and an empty key store. No worker, no Temporal:
what is under test is the gateway side of a route. Full nodes (`berth up` + `berth join`) are
berth.testing.cluster_harness.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx
import uvicorn
from temporalio.testing import ActivityEnvironment

from berth.activities.routing import configure_route, remove_route
from berth.api.auth_check import AuthCheck
from berth.api.inference_keys import KeyStore
from berth.common.api_token import TOKEN_ENV, token_path
from berth.common.cluster_token import CLUSTER_TOKEN_ENV, cluster_token_path
from berth.domain.pipeline import LaunchRequest, RouteRequest
from berth.node.engine_launch import launch, stop_instance
from berth.node.engine_records import EngineRecords
from berth.node.routes import write_gateway_config
from berth.settings import Settings
from berth.testing.harness import free_port
from berth.worker.gateway import gateway_argv, gateway_ready


def _secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


@dataclass
class GatewayNode:
    node_id: str
    env: dict[str, str]
    gateway: subprocess.Popen | None = None
    engines: dict[str, int] = field(default_factory=dict)  # instance id -> port

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    @property
    def url(self) -> str:
        """Where clients and the other nodes reach this node's gateway."""
        return self.settings.peer_gateway_url

    def start_gateway(self, timeout_s: float = 30) -> None:
        settings = self.settings
        settings.ensure_dirs()
        write_gateway_config(settings)
        log = open(settings.logs_dir / "traefik.log", "ab")
        self.gateway = subprocess.Popen(
            gateway_argv(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not gateway_ready(settings):
            if self.gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.node_id}: Traefik did not start: {(settings.logs_dir / 'traefik.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def kill_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            os.killpg(self.gateway.pid, signal.SIGKILL)
            self.gateway.wait(timeout=10)
        self.gateway = None

    def start_engine(self, deployment: str, instance_id: str, model: Path, timeout_s: float = 60) -> int:
        port = free_port()
        launch(self.settings, LaunchRequest(
            instance_id=instance_id, deployment=deployment, engine="llamacpp", model_path=str(model), port=port,
            context_size=512, engine_args=["--threads", "1"],
        ), first_attempt=True)
        self.engines[instance_id] = port
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return port
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"engine {instance_id} did not serve on {port}")
            time.sleep(0.05)

    def kill_engine(self, instance_id: str) -> None:
        record = EngineRecords(self.settings.run_dir).get(instance_id)
        if record is not None:
            os.kill(record.pid, signal.SIGKILL)

    def stop_engines(self) -> None:
        records = EngineRecords(self.settings.run_dir)
        for instance_id in list(self.engines):
            stop_instance(records, instance_id, grace_s=2, containers=False)
        self.engines.clear()

    async def configure(self, request: RouteRequest) -> str:
        """The configure_route activity, run as this node's worker runs it (its environment)."""
        with self._environment():
            return await ActivityEnvironment().run(configure_route, request)

    async def remove(self, deployment: str) -> None:
        with self._environment():
            await ActivityEnvironment().run(remove_route, deployment)

    @contextlib.contextmanager
    def _environment(self) -> Iterator[None]:
        saved = dict(os.environ)
        for name in (TOKEN_ENV, CLUSTER_TOKEN_ENV):
            os.environ.pop(name, None)  # the node's own files say
        os.environ.update(self.env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def make_node(root: Path, node_id: str, address: str, api_url: str, cluster_token: str | None,
              api_token: str | None = None) -> GatewayNode:
    """A node's home and environment (nothing started). `api_token`: the first node's; a node that
    joined has none (its gateway asks the API about every call)."""
    env = {
        "BERTH_HOME": str(root / node_id),
        "BERTH_NODE_ID": node_id,
        "BERTH_NODE_ADDRESS": address,
        "BERTH_GATEWAY_PORT": str(free_port()),
        "BERTH_GATEWAY_METRICS_PORT": "0",
        "BERTH_API_URL": api_url,
    }
    node = GatewayNode(node_id, env)
    settings = node.settings
    settings.ensure_dirs()
    if cluster_token is not None:
        _secret(cluster_token_path(settings), cluster_token)
    if api_token is not None:
        _secret(token_path(settings), api_token)
    return node


class StandinApi:
    """GET /v1/auth/check as the API answers it (berth's AuthCheck), counting the checks; anything
    else 404."""

    def __init__(self, home: Path, admin_token: str):
        self.checks = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

        async def not_found(scope, receive, send):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        check = AuthCheck(not_found, SimpleNamespace(token=admin_token, keys=KeyStore(home)))

        async def counted(scope, receive, send):
            if scope["type"] == "http":
                self.checks += 1
            await check(scope, receive, send)

        config = uvicorn.Config(counted, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> "StandinApi":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the stand-in API did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def served_requests(port: int) -> float:
    """Generations this engine ran, from its own /metrics (llama.cpp's count, not berth's)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts = dict(re.findall(r"^(llamacpp:[a-z_]+)\s+([0-9.e+]+)$", text, re.M))
    return float(counts["llamacpp:tokens_predicted_total"])
