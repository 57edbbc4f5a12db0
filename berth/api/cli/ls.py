"""`berth ls`: the deployments, as Temporal's visibility store has them."""

import argparse
import json

from berth.api.cli.common import STATUSES, api, command, say
from berth.api.cli_output import table


def run(args: argparse.Namespace) -> int:
    rows = api().list(args.status)
    if args.json:
        say(json.dumps(rows, indent=2))
        return 0
    if not rows:
        say("no deployments" + (f" with status {args.status}" if args.status else ""))
        return 0
    say(table(([r["name"], r["status"], r.get("replicas") or "-", r.get("engine"), r.get("model")] for r in rows),
              header=["NAME", "STATUS", "READY", "ENGINE", "MODEL"]))
    return 0


def add(commands) -> None:
    ls = command(
        commands, "ls",
        "list deployments",
        "List deployments with their status, engine and model, as Temporal's visibility store has "
        "them (it trails changes by about a second).",
        "berth ls\nberth ls --status FAILED",
        run,
    )
    ls.add_argument("--status", choices=STATUSES, metavar="STATUS", help=f"only this status: {', '.join(STATUSES)}")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
