"""The `berth` command."""

import argparse
import asyncio
import sys

from berth.settings import Settings

DESCRIPTION = """berth: serve models on your own hardware, durably.

Every deployment is a Temporal workflow; berth picks the engine, gives it a port and a route
through the gateway, launches it, waits until it serves, and keeps it serving."""


def cmd_up(args: argparse.Namespace) -> int:
    from berth.worker.stack import run_stack

    return asyncio.run(run_stack(Settings.from_env()))


def cmd_worker(args: argparse.Namespace) -> int:
    from berth.worker.main import main as worker_main

    worker_main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    up = commands.add_parser(
        "up",
        help="run the local stack (Temporal, Traefik, the worker) in the foreground",
        description="Start Temporal, the Traefik gateway and the berth worker on loopback, with all "
        "state under $BERTH_HOME (default ~/.berth). Ctrl-C stops everything, engines included; "
        "deployments that were DEPLOYED come back on the next `berth up`.",
        epilog="example:\n  BERTH_HOME=/tmp/berth berth up",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.set_defaults(func=cmd_up)

    worker = commands.add_parser(
        "worker",
        help="run only the berth worker (for a Temporal cluster you run yourself)",
        description="Poll the control queue `berth` and this node's queue `berth-node-<BERTH_NODE_ID>` "
        "on the Temporal at BERTH_TEMPORAL_ADDRESS (default 127.0.0.1:$BERTH_TEMPORAL_PORT).",
        epilog="example:\n  BERTH_TEMPORAL_ADDRESS=temporal:7233 BERTH_NODE_ID=gpu-1 berth worker",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
