"""A node that serves model files, as other nodes see it: its real file server (in a thread of its
own, as in the worker) behind its real gateway (Traefik on the node's own loopback address, with
the route file the worker writes), and its cluster token. For the NODE:/path tests and benchmarks.
"""

import asyncio
import subprocess
import threading
import time
from pathlib import Path

import httpx
import yaml

from berth.common.cluster_token import ensure_cluster_token
from berth.node.file_server import FileServer, remove_files_route, write_files_route
from berth.settings import Settings
from berth.testing.harness import free_port
from berth.worker.gateway import traefik_binary


class FileNode:
    """`with FileNode(home, node_id, address, roots) as node:` node.gateway_url, node.server.served."""

    def __init__(self, home: Path, node_id: str, address: str, roots: str):
        self.home = home
        self.settings = Settings.from_env({
            "BERTH_HOME": str(home), "BERTH_NODE_ID": node_id, "BERTH_NODE_ADDRESS": address,
            "BERTH_MODEL_ROOTS": roots, "BERTH_GATEWAY_PORT": str(free_port()),
            "BERTH_FILES_PORT": str(free_port()), "HOME": str(home),
        })
        self.settings.ensure_dirs()
        self.token = ensure_cluster_token(self.settings, env={})
        self.server: FileServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=f"files-{node_id}")
        self.traefik: subprocess.Popen | None = None

    @property
    def gateway_url(self) -> str:
        return self.settings.peer_gateway_url

    def _on_loop(self, work, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def start(self) -> "FileNode":
        self._thread.start()
        self.server = self._on_loop(FileServer(self.settings, self.token).start())
        write_files_route(self.settings, self.token, self.server.port)
        static = {
            "entryPoints": {"web": {"address": f"{self.settings.node_address}:{self.settings.gateway_port}"}},
            "providers": {"providersThrottleDuration": "50ms",
                          "file": {"directory": str(self.settings.routes_dir), "watch": True}},
            "ping": {"entryPoint": "web"},
            "log": {"level": "ERROR"},
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        }
        config = self.home / "traefik.yml"
        config.write_text(yaml.safe_dump(static))
        self.traefik = subprocess.Popen([traefik_binary(), f"--configFile={config}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_for_route()
        return self

    def _wait_for_route(self, timeout_s: float = 20) -> None:
        """Until the gateway routes /_berth/files/ (an unknown path there is the server's own 404)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{self.gateway_url}/_berth/files/-", headers=self.headers(), timeout=2)
                if answer.status_code == 404 and "not served" in answer.text:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the gateway never routed /_berth/files/")

    def headers(self, token: str | None = "node") -> dict[str, str]:
        if token is None:
            return {}
        return {"X-Berth-Cluster-Token": self.token if token == "node" else token}

    def url(self, path: str) -> str:
        return f"{self.gateway_url}/_berth/files{path}"

    def stop(self) -> None:
        if self.traefik is not None:
            self.traefik.terminate()
            try:
                self.traefik.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.traefik.kill()
                self.traefik.wait()
            self.traefik = None
        if self.server is not None:
            self._on_loop(self.server.stop())
            remove_files_route(self.settings)
            self.server = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        self.loop.close()

    def __enter__(self) -> "FileNode":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
