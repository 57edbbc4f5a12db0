"""`berth keys create|ls|revoke`: inference keys, which open model endpoints and nothing else."""

import argparse
import json
import sys

from berth.api.cli.common import api, command, say
from berth.api.cli_output import table

DESCRIPTION = (
    "Inference keys open the model endpoints behind the gateway (/models/<name>/...), of the deployments "
    "a key names or of all of them, and nothing of the API: give one to a chat client instead of the admin "
    "token, which can deploy, stop and read logs. berth keeps only a hash of each key; a revoked key stops "
    "working at once."
)


def _scope(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _opens(deployments: list[str] | None) -> str:
    return "every deployment" if deployments is None else ", ".join(deployments)


def create(args: argparse.Namespace) -> int:
    made = api().create_key(args.name, _scope(args.deployments))
    if args.json:
        say(json.dumps(made, indent=2))
        return 0
    say(made["key"])  # alone on stdout: KEY=$(berth keys create ...)
    say(f"inference key {made['id']}{' (' + made['name'] + ')' if made['name'] else ''} opens "
        f"{_opens(made['deployments'])}. This is the only time it is shown: berth keeps its hash. "
        f"Send it as `Authorization: Bearer <key>`; `berth keys revoke {made['id']}` ends it.", file=sys.stderr)
    return 0


def ls(args: argparse.Namespace) -> int:
    keys = api().list_keys()
    if args.json:
        say(json.dumps(keys, indent=2))
        return 0
    if not keys:
        say("no inference keys; `berth keys create` makes one")
        return 0
    say(table(([k["id"], k["name"] or "-", _opens(k["deployments"]), k["created"], f"...{k['last4']}"] for k in keys),
              header=["ID", "NAME", "DEPLOYMENTS", "CREATED", "KEY"]))
    return 0


def revoke(args: argparse.Namespace) -> int:
    gone = api().revoke_key(args.id)
    say(f"revoked inference key {gone['id']}{' (' + gone['name'] + ')' if gone['name'] else ''}: "
        "it opens nothing from now on")
    return 0


def add(commands) -> None:
    keys = command(commands, "keys", "make, list and revoke inference keys (model endpoints only)", DESCRIPTION,
                   "KEY=$(berth keys create --deployments qwen --name chat-app)\nberth keys ls\nberth keys revoke 3f2a9c01b7de",
                   None)
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    actions.required = True

    made = command(actions, "create", "make a key (printed once)",
                   "Make an inference key and print it, alone on stdout (the details go to stderr). It is "
                   "shown this once: berth keeps only its SHA-256.",
                   "berth keys create --deployments qwen,gemma --name chat-app", create)
    made.add_argument("--deployments", metavar="A,B",
                      help="the deployments it opens, comma-separated (deployment names); default: all of them")
    made.add_argument("--name", metavar="N", help="a label for people, shown by `berth keys ls`")
    made.add_argument("--json", action="store_true", help="print the API's JSON (the key included)")

    listed = command(actions, "ls", "list the keys (never the keys themselves)",
                     "List the inference keys: id, name, the deployments each opens, when it was made, and its "
                     "last 4 characters. The keys themselves are not kept.", "berth keys ls", ls)
    listed.add_argument("--json", action="store_true", help="print the API's JSON")

    gone = command(actions, "revoke", "revoke a key: it stops working at once",
                   "Revoke an inference key by its id (`berth keys ls`): the gateway refuses it from the next "
                   "request on.", "berth keys revoke 3f2a9c01b7de", revoke)
    gone.add_argument("id", metavar="ID")
