"""`berth join`: run this machine as a node of an existing berth (berth.worker.node_stack)."""

import argparse
import asyncio
import os
import stat
from pathlib import Path

from berth.api.cli.common import command, say
from berth.common.atomic_write import write_atomically
from berth.common.cluster_token import CLUSTER_TOKEN_ENV, cluster_token_path
from berth.settings import Settings


def read_token_file(path: str) -> str:
    """The token in `path`; SystemExit saying what is wrong with the file."""
    where = Path(path).expanduser()
    try:
        mode = where.stat().st_mode
        token = where.read_text().strip()
    except FileNotFoundError:
        raise SystemExit(f"berth join: --token-file {path}: no such file") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise SystemExit(f"berth join: --token-file {path}: not a text file holding the token") from None
    except OSError as error:
        raise SystemExit(f"berth join: --token-file {path}: cannot be read ({error.strerror or error})") from None
    if not token or len(token.split()) != 1:
        raise SystemExit(f"berth join: --token-file {path}: the file must hold the token alone, on one line")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        say(f"berth join: warning: {path} may be read by other users of this machine; `chmod 600 {path}`")
    return token


def cluster_token(args: argparse.Namespace) -> str | None:
    """--token-file, else BERTH_CLUSTER_TOKEN; None when neither is given."""
    if args.token_file:
        return read_token_file(args.token_file)
    return (os.environ.get(CLUSTER_TOKEN_ENV) or "").strip() or None


def keep_token_in_home(settings: Settings, token: str) -> None:
    """The node's processes read the token from $BERTH_HOME/cluster-token (0600); it leaves the
    environment, so that the engines the worker starts do not inherit it."""
    path = cluster_token_path(settings)
    try:
        current = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        current = None
    if current != token:
        write_atomically(path, token + "\n")  # mkstemp: 0600
    os.chmod(path, 0o600)
    os.environ.pop(CLUSTER_TOKEN_ENV, None)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    token = cluster_token(args)
    from berth.worker.node_stack import join_problems, run_node

    problems = join_problems(settings, os.environ, token)
    if problems:
        for problem in problems:
            say(f"berth join: {problem}")
        return 2
    settings.ensure_dirs()
    keep_token_in_home(settings, token)
    return asyncio.run(run_node(settings))


def add(commands) -> None:
    join = command(
        commands, "join",
        "run this machine as a node of an existing berth (worker + gateway, in the foreground)",
        "Run the berth worker (polling `berth` and `berth-node-<BERTH_NODE_ID>`) and a gateway (Traefik on "
        "BERTH_NODE_ADDRESS:BERTH_GATEWAY_PORT) against the cluster's Temporal at BERTH_TEMPORAL_ADDRESS "
        "(required, checked first), with the cluster token (BERTH_CLUSTER_TOKEN or --token-file: a copy of the "
        "first node's $BERTH_HOME/cluster-token) and this node's own $BERTH_HOME. BERTH_NODE_ADDRESS is where the "
        "other nodes reach this node's gateway; BERTH_API_URL is the cluster's API, which the gateway asks "
        "whether a request may pass. For a Temporal with TLS or an API key, see BERTH_TEMPORAL_TLS_* and "
        "BERTH_TEMPORAL_API_KEY in docs/configuration.md. Ctrl-C or SIGTERM drains the node first (its "
        "instances move to other nodes, up to BERTH_DRAIN_TIMEOUT_S, default 120 s; a second Ctrl-C stops at "
        "once), then stops the worker, the engines and the gateway. docs/cluster.md.",
        "BERTH_TEMPORAL_ADDRESS=10.0.0.1:7233 BERTH_API_URL=http://10.0.0.1:8000 \\\n"
        "  BERTH_NODE_ID=gpu-2 BERTH_NODE_ADDRESS=10.0.0.2 berth join --token-file ./cluster-token",
        run,
    )
    join.add_argument(
        "--token-file", metavar="FILE",
        help=f"a file holding the cluster token (else {CLUSTER_TOKEN_ENV}); copied to this node's $BERTH_HOME",
    )
