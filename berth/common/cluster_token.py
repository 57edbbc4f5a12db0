"""The cluster token: the secret the nodes of one berth share (docs/cluster.md).

A gateway forwards a request to an instance on another node with it (`X-Berth-Cluster-Token`),
and a node copies model files from another node's gateway with it; a peer route or a file request
without it gets nothing. It is BERTH_CLUSTER_TOKEN when set, else the content of
$BERTH_HOME/cluster-token, which the first `berth up` creates (mode 0600); `berth join` on another
machine is given it (the variable, or `--token-file`). Not the API token: a node that joins can
serve and copy, it cannot administer.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from berth.common.atomic_write import create_secret_once
from berth.settings import Settings

CLUSTER_TOKEN_ENV = "BERTH_CLUSTER_TOKEN"
CLUSTER_TOKEN_FILE = "cluster-token"
CLUSTER_TOKEN_HEADER = "X-Berth-Cluster-Token"


def cluster_token_path(settings: Settings) -> Path:
    return settings.home / CLUSTER_TOKEN_FILE


def load_cluster_token(settings: Settings, env: Mapping[str, str] = os.environ) -> str | None:
    """BERTH_CLUSTER_TOKEN, else the token file's content, else None."""
    if env.get(CLUSTER_TOKEN_ENV):
        return env[CLUSTER_TOKEN_ENV].strip()
    try:
        return cluster_token_path(settings).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def ensure_cluster_token(settings: Settings, env: Mapping[str, str] = os.environ) -> str:
    """The token, creating $BERTH_HOME/cluster-token (mode 0600) when there is none yet."""
    existing = load_cluster_token(settings, env)
    if existing:
        return existing
    return create_secret_once(cluster_token_path(settings)).strip()
