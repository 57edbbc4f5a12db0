"""`berth retry NAME`: deploy again, optionally with a smaller context."""

import argparse
import time

from berth.api.cli.common import api, command, follow_until_done, say
from berth.api.cli_output import last_transition_key


def run(args: argparse.Namespace) -> int:
    client = api()
    before = client.get(args.name)
    patch = {}
    if args.context_size is not None:
        patch["context_size"] = args.context_size
    answer = client.retry(args.name, patch)
    rolling = (answer.get("rollout") or "").startswith("rolling")
    if not args.wait:
        if rolling:
            say(f"rolling {args.name} one instance at a time; `berth status {args.name}` follows it")
            return 0
        say(f"retrying {args.name}; `berth status {args.name} --watch` follows it")
        return 0
    if rolling:
        return _follow_rollout(client, args.name)
    return follow_until_done(client, args.name, seen=last_transition_key(before), require_new=True)


def _follow_rollout(client, name: str) -> int:
    """A DEPLOYED deployment rolls (docs/replicas.md): until the rollout is done (0) or rolled back (1)."""
    shown = None
    while True:
        state = client.get(name)
        rollout = state.get("rollout")
        if rollout != shown and rollout:
            say(f"{name}: {rollout}")
            shown = rollout
        if not (rollout or "").startswith("rolling"):
            if rollout is None and state.get("status") == "DEPLOYED":
                say(f"{name} is DEPLOYED with the new spec: {state.get('endpoint')}")
                return 0
            return 1
        time.sleep(0.25)


def add(commands) -> None:
    retry = command(
        commands, "retry",
        "deploy a deployment again, optionally with a smaller context",
        "Deploy again now: after FAILED or MUST_REDOWNLOAD (berth does not retry those by itself), "
        "or to apply a change. The change is checked first; a bad one changes nothing.",
        "berth retry qwen --context-size 2048 --wait",
        run,
    )
    retry.add_argument("name", metavar="NAME")
    retry.add_argument("--context-size", type=int, metavar="N", help="a new context size (tokens)")
    retry.add_argument("--wait", action="store_true", help="follow it until DEPLOYED (exit 0) or a failure (exit 1)")
