"""`berth worker`: only the worker, for a Temporal cluster run elsewhere."""

import argparse

from berth.api.cli.common import command


def run(args: argparse.Namespace) -> int:
    from berth.worker.main import main as worker_main

    worker_main()
    return 0


def add(commands) -> None:
    command(
        commands, "worker",
        "run only the berth worker (for a Temporal cluster you run yourself)",
        "Poll the control queue `berth` and this node's queue `berth-node-<BERTH_NODE_ID>` "
        "on the Temporal at BERTH_TEMPORAL_ADDRESS (default 127.0.0.1:$BERTH_TEMPORAL_PORT).",
        "BERTH_TEMPORAL_ADDRESS=temporal:7233 BERTH_NODE_ID=gpu-1 berth worker",
        run,
    )
