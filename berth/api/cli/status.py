"""`berth status NAME`: one deployment, or its transitions as they happen."""

import argparse
import json

from berth.api.cli.common import api, command, follow_until_done, say
from berth.api.cli_output import last_transition_key, state_text, transition_line


def run(args: argparse.Namespace) -> int:
    client = api()
    state = client.get(args.name)
    if args.json:
        say(json.dumps(state, indent=2))
        return 0
    if not args.watch:
        say(state_text(state))
        return 0
    for transition in (state.get("transitions") or [])[-5:]:  # a little history, then what happens
        say(transition_line(transition))
    return follow_until_done(client, args.name, seen=last_transition_key(state))


def add(commands) -> None:
    status = command(
        commands, "status",
        "show one deployment",
        "Show a deployment: status, engine and why, endpoint, process, the last error with what to "
        "do about it, and recent transitions. With --watch, print each transition as it happens "
        "until DEPLOYED (exit 0) or a failure (exit 1).",
        "berth status qwen\nberth status qwen --watch",
        run,
    )
    status.add_argument("name", metavar="NAME")
    status.add_argument("--watch", action="store_true", help="follow it until DEPLOYED or a failure")
    status.add_argument("--json", action="store_true", help="print the API's JSON (the whole state)")
