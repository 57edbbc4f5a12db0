"""Node-local settings, read from the environment once: where berth keeps its state and which ports it uses."""

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONTROL_TASK_QUEUE = "berth"
NAMESPACE = "default"


def node_task_queue(node_id: str) -> str:
    return f"berth-node-{node_id}"


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"berth: {name}={raw!r} is not a number") from None


def _port_range(raw: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in raw.split("-", 1))
    except ValueError:
        raise SystemExit(f"berth: BERTH_PORT_RANGE={raw!r} must look like 20000-20999") from None
    if not (1024 <= low <= high <= 65535):
        raise SystemExit(f"berth: BERTH_PORT_RANGE={raw!r} must lie within 1024-65535, low <= high")
    return low, high


@dataclass(frozen=True)
class Settings:
    home: Path
    node_id: str
    temporal_port: int
    ui_port: int
    gateway_port: int
    api_port: int
    port_range: tuple[int, int]
    # Prometheus endpoints (0: off): the worker's Temporal SDK metrics, the Temporal dev server's,
    # Traefik's metrics entry point (berth.worker.prometheus_config lists them all for Prometheus)
    worker_metrics_port: int
    temporal_metrics_port: int
    gateway_metrics_port: int

    temporal_address: str
    gateway_url: str
    api_url: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        home = Path(env.get("BERTH_HOME") or Path.home() / ".berth").expanduser().resolve()
        temporal_port = _int_env(env, "BERTH_TEMPORAL_PORT", 7233)
        gateway_port = _int_env(env, "BERTH_GATEWAY_PORT", 8080)
        api_port = _int_env(env, "BERTH_API_PORT", 8000)
        return cls(
            home=home,
            node_id=env.get("BERTH_NODE_ID") or socket.gethostname().split(".")[0].lower(),
            temporal_port=temporal_port,
            ui_port=_int_env(env, "BERTH_UI_PORT", 8233),
            gateway_port=gateway_port,
            api_port=api_port,
            port_range=_port_range(env.get("BERTH_PORT_RANGE", "20000-20999")),
            worker_metrics_port=_int_env(env, "BERTH_WORKER_METRICS_PORT", 9464),
            temporal_metrics_port=_int_env(env, "BERTH_TEMPORAL_METRICS_PORT", 7235),
            gateway_metrics_port=_int_env(env, "BERTH_GATEWAY_METRICS_PORT", 8082),
            # a cluster elsewhere (docker-compose): where Temporal and the gateway really are
            temporal_address=env.get("BERTH_TEMPORAL_ADDRESS") or f"127.0.0.1:{temporal_port}",
            gateway_url=env.get("BERTH_GATEWAY_URL") or f"http://127.0.0.1:{gateway_port}",
            api_url=env.get("BERTH_API_URL") or f"http://127.0.0.1:{api_port}",
        )

    @property
    def node_queue(self) -> str:
        return node_task_queue(self.node_id)

    @property
    def routes_dir(self) -> Path:
        return self.home / "routes"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """Engine records and exit files: what this node launched."""
        return self.home / "run"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def prometheus_dir(self) -> Path:
        """prometheus.yml, the API token it scrapes with, and engines/: one targets file per engine."""
        return self.home / "prometheus"

    @property
    def engine_targets_dir(self) -> Path:
        return self.prometheus_dir / "engines"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.routes_dir, self.logs_dir, self.run_dir, self.models_dir):
            path.mkdir(parents=True, exist_ok=True)
