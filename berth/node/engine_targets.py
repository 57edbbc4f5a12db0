"""Prometheus's list of this node's serving engines: one file_sd targets file per instance,
$BERTH_HOME/prometheus/engines/<instance>.json, that the job `engines` of prometheus.yml reads
(Prometheus watches the folder; berth.worker.prometheus_config).

Written when supervise starts watching an engine (it serves), removed when the engine is stopped
(stop_instance) or the node shuts down; reconcile removes one whose engine has no record. Only
engines with a metrics endpoint are listed (Engine.metrics_path: llama.cpp with --metrics, vLLM;
not MLX). Each target carries the labels deployment, instance (the instance id, in place of
host:port), node and engine; the address is the engine's own 127.0.0.1 port, not the gateway
(which serves only /models/<name>/... and strips that prefix)."""

import json
import logging
from pathlib import Path

from berth.common.atomic_write import write_atomically

log = logging.getLogger(__name__)


def targets_dir(home: Path) -> Path:
    return home / "prometheus" / "engines"  # = Settings.engine_targets_dir


def target_file(home: Path, instance_id: str) -> Path:
    return targets_dir(home) / f"{instance_id}.json"


def targets(deployment: str, instance_id: str, node: str, engine: str, port: int) -> list[dict]:
    return [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {"deployment": deployment, "instance": instance_id, "node": node, "engine": engine},
        }
    ]


def write_target(home: Path, deployment: str, instance_id: str, node: str, engine: str, port: int) -> None:
    path = target_file(home, instance_id)
    text = json.dumps(targets(deployment, instance_id, node, engine, port), indent=1) + "\n"
    try:
        if path.exists() and path.read_text() == text:
            return  # a resumed supervise: already listed
        write_atomically(path, text)
    except OSError as error:  # never worth failing supervise for
        log.warning("cannot list %s for Prometheus: %s", instance_id, error)


def remove_target(home: Path, instance_id: str) -> None:
    target_file(home, instance_id).unlink(missing_ok=True)


def listed(home: Path) -> set[str]:
    return {path.stem for path in targets_dir(home).glob("*.json")}


def prune_targets(home: Path, keep: set[str]) -> list[str]:
    """Remove the targets of instances not in `keep`; which ones were removed."""
    removed = sorted(listed(home) - keep)
    for instance_id in removed:
        remove_target(home, instance_id)
    return removed
