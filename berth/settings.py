"""Node-local settings, read from the environment once: where berth keeps its state and which ports it uses."""

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
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


# Where a node reads local models from, unless BERTH_MODEL_ROOTS says otherwise: the folders people
# keep models in, in their home and on the machine (a data disk, a NAS mount). $BERTH_HOME/models
# (presets, URL and hub downloads) is always allowed on top. Not /tmp, not a whole home: a model
# path must not make an engine read the node's secrets (~/.ssh, the API token, a cloud credential).
MODEL_ROOTS_ENV = "BERTH_MODEL_ROOTS"
DEFAULT_MODEL_ROOTS = (
    "~/models",
    "~/Models",
    "~/.cache/huggingface/hub",  # the Hugging Face cache: `hf download` puts snapshots there
    "~/.lmstudio/models",
    "~/.cache/lm-studio/models",
    "/models",
    "/srv",
    "/mnt",
    "/media",
    "/data",
    "/opt/models",
    "/Volumes",  # macOS: external disks
)


# Set by `berth up` on the API it starts: the node the API runs beside, with the same files and
# environment, so that the API can check a spec's model path against that node's roots.
API_NODE_ENV = "BERTH_API_NODE"


def _model_roots(env: Mapping[str, str], home: Path) -> tuple[Path, ...]:
    """The folders local models may be read from: BERTH_MODEL_ROOTS (os.pathsep-separated absolute
    folders, `~` for the home; empty: none but $BERTH_HOME/models) or DEFAULT_MODEL_ROOTS, then
    $BERTH_HOME/models. Normalised, not resolved: links are followed where a path is checked."""
    raw = env.get(MODEL_ROOTS_ENV)
    entries = DEFAULT_MODEL_ROOTS if raw is None else tuple(raw.split(os.pathsep))
    user_home = env.get("HOME") or str(Path.home())
    roots: list[Path] = []
    for entry in (entry.strip() for entry in entries):
        if not entry:
            continue
        if entry == "~" or entry.startswith("~/"):
            entry = user_home + entry[1:]
        if not os.path.isabs(entry):
            raise SystemExit(
                f"berth: {MODEL_ROOTS_ENV}: {entry!r} is not an absolute folder; list absolute folders "
                f"separated by {os.pathsep!r}, e.g. /srv/models{os.pathsep}/data/models"
            )
        roots.append(Path(os.path.normpath(entry)))
    roots.append(home / "models")
    return tuple(dict.fromkeys(roots))


def _port_range(raw: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in raw.split("-", 1))
    except ValueError:
        raise SystemExit(f"berth: BERTH_PORT_RANGE={raw!r} must look like 20000-20999") from None
    if not (1024 <= low <= high <= 65535):
        raise SystemExit(f"berth: BERTH_PORT_RANGE={raw!r} must lie within 1024-65535, low <= high")
    return low, high


def _grace(env: Mapping[str, str]) -> float:
    raw = env.get("BERTH_NODE_GRACE_S") or "8"
    try:
        grace = float(raw)
    except ValueError:
        raise SystemExit(f"berth: BERTH_NODE_GRACE_S={raw!r} is not a number of seconds") from None
    if not (2 <= grace <= 3600):
        raise SystemExit(f"berth: BERTH_NODE_GRACE_S={raw!r} must lie within 2-3600 seconds")
    return grace


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SystemExit(f"berth: {name}={raw!r} must be 1 or 0 (true or false)")


def _path_env(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    return os.path.expanduser(raw) if raw else None


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
    # the cluster (docs/cluster.md): the address peers reach this node's gateway at (it binds there),
    # the seconds without a presence heartbeat before a node is DOWN, and the port of the node's
    # file server (loopback, behind the gateway: other nodes copy NODE:/path models from it)
    node_address: str = "127.0.0.1"
    node_grace_s: float = 8.0
    files_port: int = 8084
    # the folders local models may be read from ($BERTH_HOME/models among them): BERTH_MODEL_ROOTS
    model_roots: tuple[Path, ...] = ()
    # the Temporal client, for a Temporal cluster of your own (docs/configuration.md): its namespace,
    # TLS (a server CA, a client certificate and key for mTLS, the name the server's certificate
    # carries) and an API key; berth.common.temporal_options reads and checks the files
    temporal_namespace: str = NAMESPACE
    temporal_tls: bool = False
    temporal_tls_ca: str | None = None
    temporal_tls_cert: str | None = None
    temporal_tls_key: str | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key_file: str | None = None
    temporal_api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        home = Path(env.get("BERTH_HOME") or Path.home() / ".berth").expanduser().resolve()
        temporal_port = _int_env(env, "BERTH_TEMPORAL_PORT", 7233)
        gateway_port = _int_env(env, "BERTH_GATEWAY_PORT", 8080)
        api_port = _int_env(env, "BERTH_API_PORT", 8000)
        node_address = env.get("BERTH_NODE_ADDRESS") or "127.0.0.1"
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
            # a cluster elsewhere (docker-compose, `berth join`): where Temporal and the gateway really are
            temporal_address=env.get("BERTH_TEMPORAL_ADDRESS") or f"127.0.0.1:{temporal_port}",
            gateway_url=env.get("BERTH_GATEWAY_URL") or f"http://{node_address}:{gateway_port}",
            api_url=env.get("BERTH_API_URL") or f"http://127.0.0.1:{api_port}",
            model_roots=_model_roots(env, home),
            node_address=node_address,
            node_grace_s=_grace(env),
            files_port=_int_env(env, "BERTH_FILES_PORT", 8084),
            temporal_namespace=(env.get("BERTH_TEMPORAL_NAMESPACE") or "").strip() or NAMESPACE,
            temporal_tls=_flag(env, "BERTH_TEMPORAL_TLS"),
            temporal_tls_ca=_path_env(env, "BERTH_TEMPORAL_TLS_CA"),
            temporal_tls_cert=_path_env(env, "BERTH_TEMPORAL_TLS_CERT"),
            temporal_tls_key=_path_env(env, "BERTH_TEMPORAL_TLS_KEY"),
            temporal_tls_server_name=(env.get("BERTH_TEMPORAL_TLS_SERVER_NAME") or "").strip() or None,
            temporal_api_key_file=_path_env(env, "BERTH_TEMPORAL_API_KEY_FILE"),
            temporal_api_key=(env.get("BERTH_TEMPORAL_API_KEY") or "").strip() or None,
        )

    @property
    def peer_gateway_url(self) -> str:
        """Where the other nodes reach this node's gateway."""
        return f"http://{self.node_address}:{self.gateway_port}"

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
