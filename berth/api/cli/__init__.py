"""The `berth` command: `up` and `worker` run berth; the other commands talk to the REST API that
`berth up` serves (http://127.0.0.1:$BERTH_API_PORT, token from BERTH_API_TOKEN or
$BERTH_HOME/api-token).

One module per command, each with `run(args)` (the command) and `add(commands)` (its parser,
declared through common.command: help, description, example); COMMANDS lists them in the order
`berth --help` shows them.
"""

import argparse
import sys

from berth.api.cli import deploy, engines, join, keys, logs, ls, nodes, retry, scale, status, stop, ui, up, worker
from berth.api.cli.common import ENGINES, STATUSES, deployment_spec, model_reference, name_from_model, say
from berth.api.client import ApiRequestError, ApiUnreachable

__all__ = ["COMMANDS", "ENGINES", "STATUSES", "build_parser", "deployment_spec", "main", "model_reference", "name_from_model"]

DESCRIPTION = """berth: serve models on your own hardware, durably.

Every deployment is a Temporal workflow; berth picks the engine, gives it a port and a route
through the gateway, launches it, waits until it serves, and keeps it serving.

Start with `berth up` (it runs everything); in another terminal, `berth deploy MODEL --wait`."""

COMMANDS = [
    up.add, deploy.add, ls.add, status.add, logs.add, stop.add, retry.add, scale.add, engines.add, keys.add, ui.add,
    join.add, nodes.add_nodes, nodes.add_drain, nodes.add_undrain, worker.add,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth",
        description=DESCRIPTION,
        epilog="example:\n  berth up &\n  berth deploy ./model.gguf --wait\n  berth ls\n\n"
        "`berth COMMAND --help` explains each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except ApiUnreachable as error:
        say(f"berth: {error}", file=sys.stderr)
        code = 1
    except ApiRequestError as error:
        say(f"berth: {error.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
