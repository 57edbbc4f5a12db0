"""`berth logs NAME`: the engine's log, and the lines that match a known failure."""

import argparse
import sys
import time

from berth.api.cli.common import api, command, say


def run(args: argparse.Namespace) -> int:
    client = api()
    answer = client.logs(args.name, tail=args.lines, instance=args.instance)
    _print_logs(answer)
    if args.follow and answer.get("instance") is None and len(answer.get("instances") or []) > 1:
        say(f"berth: {args.name} has several instances: follow one with --instance "
            f"({', '.join(answer['instances'])})", file=sys.stderr)
        return 2
    if not args.follow:
        if answer["path"] is None and not answer["lines"]:
            say(f"berth: {args.name} has no engine log yet (no engine launched)", file=sys.stderr)
        return 0
    try:
        while True:
            time.sleep(0.5)
            answer = client.logs(args.name, tail=10_000, offset=answer["offset"], instance=answer.get("instance"))
            _print_logs(answer)
    except KeyboardInterrupt:
        return 0


def _print_logs(answer: dict) -> None:
    for line in answer["lines"]:
        print(line)
    sys.stdout.flush()
    for issue in answer["issues"]:  # on stderr: stdout stays the log itself
        say(f"berth: {issue['code']} ({issue['description']}): {issue['text']}", file=sys.stderr)


def add(commands) -> None:
    logs = command(
        commands, "logs",
        "print a deployment's engine log",
        "Print the last lines of the engine's log. Lines that match a known failure (out of memory, "
        "CUDA errors, unreadable model files...) are named on stderr after them. Each instance has its "
        "own log: --instance names one; without it, every instance's lines are printed, tagged with "
        "its id (`berth status NAME` lists the instances).",
        "berth logs qwen -n 50\nberth logs qwen -f\nberth logs qwen --instance qwen-1a2b3c4d",
        run,
    )
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-n", "--lines", type=int, default=100, metavar="N", help="how many of the last lines (default 100)")
    logs.add_argument("--instance", metavar="ID", help="one instance's log (default: every instance's)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
