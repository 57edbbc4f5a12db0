"""`berth stop NAME`: stop a deployment."""

import argparse

from berth.api.cli.common import api, command, follow_until_done, say
from berth.api.cli_output import last_transition_key


def run(args: argparse.Namespace) -> int:
    client = api()
    state = client.stop(args.name)
    if not args.wait:
        say(f"stopping {args.name} (status {state['status']}); `berth status {args.name}` shows when it is STOPPED")
        return 0
    return follow_until_done(
        client, args.name, done_ok=frozenset({"STOPPED"}), done_bad=frozenset(), seen=last_transition_key(state)
    )


def add(commands) -> None:
    stop = command(
        commands, "stop",
        "stop a deployment",
        "Stop the engine and remove its route and port. The name can be deployed again afterwards.",
        "berth stop qwen --wait",
        run,
    )
    stop.add_argument("name", metavar="NAME")
    stop.add_argument("--wait", action="store_true", help="return once it is STOPPED")
