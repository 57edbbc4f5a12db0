"""$BERTH_HOME/prometheus/prometheus.yml: a complete Prometheus config for this node, written by
`berth up`, that `prometheus --config.file=$BERTH_HOME/prometheus/prometheus.yml` runs as it is.

Its jobs (docs/observability.md says what each exports):
    berth-api      the API's GET /metrics (deployments by status and engine), with the API token as
                   a bearer (the file api-token beside it, mode 0600, a copy of berth's token)
    berth-worker   the worker's Temporal SDK exporter: berth's counters and histograms, `temporal_*`
    gateway        Traefik's metrics entry point: requests, latency, retries per deployment
    temporal       the embedded Temporal dev server's --metrics-port
    engines        every serving engine's own /metrics, listed by the node in engines/*.json
                   (berth.node.engine_targets) with the labels deployment, instance, node, engine
A job whose port is 0 (its BERTH_*_METRICS_PORT) is left out. docker-compose.yml runs the same jobs
(deploy/prometheus/prometheus.yml; tests/test_compose.py compares them).

A node that `berth join` runs has no API and no Temporal server of its own: its config
(`write_join_prometheus_config`) has the jobs berth-worker, gateway and engines only, at the same
path. The cluster's node metrics (capacity, reservations, status) are the first node's API's.
"""

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from berth.common.api_token import ensure_api_token
from berth.common.atomic_write import write_atomically
from berth.settings import Settings

CONFIG_FILE = "prometheus.yml"
TOKEN_FILE = "api-token"
SCRAPE_INTERVAL = "15s"
# the engines' targets files are re-read this often (and on change: Prometheus watches them)
TARGETS_REFRESH = "30s"


def config_path(settings: Settings) -> Path:
    return settings.prometheus_dir / CONFIG_FILE


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _job(name: str, target: str, **extra) -> dict:
    return {"job_name": name, "static_configs": [{"targets": [target]}], **extra}


def _local_jobs(settings: Settings, names: tuple[str, ...]) -> list[dict]:
    ports = {
        "berth-worker": settings.worker_metrics_port,
        "gateway": settings.gateway_metrics_port,
        "temporal": settings.temporal_metrics_port,
    }
    return [_job(name, f"127.0.0.1:{ports[name]}") for name in names if ports[name]]


def _engines_job(targets_glob: str) -> dict:
    return {
        "job_name": "engines",
        "metrics_path": "/metrics",
        "file_sd_configs": [{"files": [targets_glob], "refresh_interval": TARGETS_REFRESH}],
    }


def scrape_configs(settings: Settings, token_file: str, targets_glob: str) -> list[dict]:
    api = urlsplit(settings.api_url)
    jobs = [
        _job(
            "berth-api",
            _host_port(settings.api_url),
            scheme=api.scheme or "http",
            metrics_path="/metrics",
            authorization={"type": "Bearer", "credentials_file": token_file},
        )
    ]
    return jobs + _local_jobs(settings, ("berth-worker", "gateway", "temporal")) + [_engines_job(targets_glob)]


def join_scrape_configs(settings: Settings, targets_glob: str) -> list[dict]:
    """A joined node's jobs: its worker, its gateway, its engines (no API, no Temporal server)."""
    return _local_jobs(settings, ("berth-worker", "gateway")) + [_engines_job(targets_glob)]


def prometheus_config(settings: Settings, token_file: str, targets_glob: str) -> dict:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": scrape_configs(settings, token_file, targets_glob),
    }


def _config(scrape_configs: list[dict]) -> dict:
    interval = scrape_interval()
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": scrape_configs,
    }


def scrape_interval() -> str:
    """BERTH_PROMETHEUS_SCRAPE_INTERVAL (a Prometheus duration such as 5s or 1m), else 15s."""
    raw = (os.environ.get("BERTH_PROMETHEUS_SCRAPE_INTERVAL") or "").strip() or SCRAPE_INTERVAL
    if not re.fullmatch(r"[1-9][0-9]{0,5}(ms|s|m|h)", raw):
        raise SystemExit(f"berth: BERTH_PROMETHEUS_SCRAPE_INTERVAL={raw!r} must look like 15s, 500ms or 1m")
    return raw


def write_prometheus_config(settings: Settings) -> Path:
    """Write the config (and the token copy it reads) under $BERTH_HOME/prometheus; its path."""
    directory = settings.prometheus_dir
    settings.engine_targets_dir.mkdir(parents=True, exist_ok=True)
    token_file = directory / TOKEN_FILE
    write_atomically(token_file, ensure_api_token(settings) + "\n")  # mkstemp: mode 0600
    os.chmod(token_file, 0o600)
    config = prometheus_config(settings, str(token_file), str(settings.engine_targets_dir / "*.json"))
    config["global"]["scrape_interval"] = scrape_interval()
    path = config_path(settings)
    write_atomically(path, yaml.safe_dump(config, sort_keys=False))
    return path


def write_join_prometheus_config(settings: Settings) -> Path:
    """`berth join`'s config: $BERTH_HOME/prometheus/prometheus.yml with this node's worker,
    gateway and engines (no API job, so no token copy; no Temporal server job); its path.
    `prometheus --config.file=<path>` runs it as it is, on this node, as berth's user."""
    settings.engine_targets_dir.mkdir(parents=True, exist_ok=True)
    config = _config(join_scrape_configs(settings, str(settings.engine_targets_dir / "*.json")))
    path = config_path(settings)
    write_atomically(path, yaml.safe_dump(config, sort_keys=False))
    return path
