"""`berth scale NAME N`: run N instances of a deployment behind its one route."""

import argparse
import time

from berth.api.cli.common import api, command, say

WAIT_POLL_S = 0.25


def run(args: argparse.Namespace) -> int:
    client = api()
    state = client.scale(args.name, args.replicas)
    if not args.wait:
        say(f"scaling {args.name} to {args.replicas}; `berth status {args.name}` shows its instances")
        return 0
    deadline = time.monotonic() + args.timeout
    shown = None
    while True:
        instances = state.get("instances") or []
        ready = state.get("ready_replicas", 0)
        line = f"{args.name}: {ready}/{args.replicas} serve, {len(instances)} instances, {state.get('status')}"
        if line != shown:
            say(line)
            shown = line
        if len(instances) == args.replicas and ready == args.replicas:
            return 0
        if state.get("status") in ("FAILED", "MUST_REDOWNLOAD", "STOPPED"):
            error = state.get("error") or {}
            say(f"{args.name} is {state.get('status')}: {error.get('message', '')}")
            return 1
        if time.monotonic() > deadline:
            say(f"not done after {args.timeout:g} s; `berth status {args.name}` shows where it stands")
            return 1
        time.sleep(WAIT_POLL_S)
        state = client.get(args.name)


def add(commands) -> None:
    scale = command(
        commands, "scale",
        "run N instances of a deployment behind its one route",
        "Run N instances of the deployment (0 keeps it, with nothing running). New instances join the "
        "route once they serve; extra ones leave it and are drained before they stop (those that do "
        "not serve first, then the newest). A count the node's memory cannot hold is refused with the "
        "numbers, and nothing changes.",
        "berth scale qwen 3 --wait",
        run,
    )
    scale.add_argument("name", metavar="NAME")
    scale.add_argument("replicas", type=int, metavar="N", help="how many instances")
    scale.add_argument("--wait", action="store_true", help="wait until N instances serve (exit 0) or it fails (exit 1)")
    scale.add_argument("--timeout", type=float, default=600.0, metavar="S", help="how long --wait waits (default 600)")
