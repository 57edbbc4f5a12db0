"""`berth nodes`, `berth drain NODE [--wait]`, `berth undrain NODE`: the cluster's nodes through the
REST API (GET /v1/nodes, POST /v1/nodes/{id}/drain|undrain), as the other commands do."""

import argparse
import json
import time

from berth.api.cli.common import api, command, say
from berth.api.cli_output import printable, table

HEADER = ["ID", "ADDRESS", "STATUS", "RAM", "GPUS", "CAPACITY", "RESERVED", "INSTANCES"]
DRAIN_POLL_S = 0.5


def size(n_bytes: int | None) -> str:
    """Bytes as a short size, without pydantic (the CLI stays light): '1.5 GiB', '253 MiB', '0'."""
    if n_bytes is None:
        return "?"
    value = float(n_bytes)
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.1f} {unit}" if scaled < 10 else f"{scaled:.0f} {unit}"
    return "0" if value == 0 else f"{value:.0f} B"


def gpus_cell(gpus: list[dict]) -> str:
    """'2x H100 (80 GiB)' for identical GPUs, each listed otherwise; '-' for none."""
    if not gpus:
        return "-"
    kinds: dict[tuple[str, int], int] = {}
    for gpu in gpus:
        key = (str(gpu.get("name") or "GPU"), int(gpu.get("memory_bytes") or 0))
        kinds[key] = kinds.get(key, 0) + 1
    return ", ".join(f"{count}x {name} ({size(memory)})" for (name, memory), count in kinds.items())


def status_cell(node: dict) -> str:
    status = node.get("status") or "?"
    return f"{status} ({node['reason']})" if node.get("reason") and status != "READY" else status


def nodes_table(nodes: list[dict]) -> str:
    rows = []
    for node in sorted(nodes, key=lambda n: n.get("id") or ""):
        instances = node.get("instances") or []
        rows.append([
            node.get("id"), node.get("address"), status_cell(node), size(node.get("ram_bytes")),
            gpus_cell(node.get("gpus") or []), size(node.get("capacity_bytes")), size(node.get("reserved_bytes")),
            str(len(instances)) if instances else "0",
        ])
    return table(rows, header=HEADER)


def run_nodes(args: argparse.Namespace) -> int:
    answer = api().nodes()
    if args.json:
        say(json.dumps(answer, indent=2))
        return 0
    nodes = answer.get("nodes") or []
    if not nodes:
        say("no node has joined the cluster yet")
        return 0
    say(nodes_table(nodes))
    if args.instances:
        for node in sorted(nodes, key=lambda n: n.get("id") or ""):
            for instance in node.get("instances") or []:
                say(printable(f"  {node['id']}: {instance}"))
    return 0


def run_drain(args: argparse.Namespace) -> int:
    client = api()
    node = client.drain(args.node)
    say(printable(f"{node['id']}: {node['status']}; its deployments move their instances to other nodes"))
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        node = client.node(args.node)
        left = node.get("instances") or []
        if not left:
            say(printable(f"{node['id']}: drained, no instance left"))
            return 0
        if len(left) != last:
            say(printable(f"{node['id']}: {len(left)} instance(s) left: {', '.join(left)}"))
            last = len(left)
        if node.get("status") != "DRAINING":
            say(printable(f"{node['id']}: now {node.get('status')}, no longer draining; {len(left)} instance(s) left"))
            return 1
        if time.monotonic() >= deadline:
            say(printable(f"{node['id']}: still {len(left)} instance(s) after {args.timeout:.0f} s: {', '.join(left)}"))
            return 1
        time.sleep(DRAIN_POLL_S)


def run_undrain(args: argparse.Namespace) -> int:
    node = api().undrain(args.node)
    say(printable(f"{node['id']}: {node['status']}; new instances may be placed there again"))
    return 0


def add_nodes(commands) -> None:
    nodes = command(
        commands, "nodes",
        "the cluster's nodes: status, hardware, capacity, reservations",
        "List the nodes that joined the cluster (`berth up` is the first, `berth join` the others): id, the "
        "address of its gateway, status (READY, NOT_READY, DRAINING, DOWN, with the reason), RAM, GPUs, the "
        "memory berth may use there (capacity), the memory reserved by the instances placed there, and how "
        "many instances. Asks GET /v1/nodes (the cluster workflow's `nodes` query). docs/cluster.md.",
        "berth nodes\nberth nodes --instances\nberth nodes --json",
        run_nodes,
    )
    nodes.add_argument("--instances", action="store_true", help="also list each node's instances")
    nodes.add_argument("--json", action="store_true", help="print the API's JSON")


def add_drain(commands) -> None:
    drain = command(
        commands, "drain",
        "move every instance off a node and place nothing new there",
        "Mark NODE DRAINING: nothing new is placed there, and each deployment with an instance there starts "
        "one on another node, then stops the old one once the new one serves (no failed request). `--wait` "
        "waits until the node holds no instance. `berth undrain NODE` makes it READY again. Stopping "
        "`berth join` (Ctrl-C, SIGTERM) drains its node the same way.",
        "berth drain gpu-2 --wait\nberth drain gpu-2 --wait --timeout 600",
        run_drain,
    )
    drain.add_argument("node", metavar="NODE", help="the node's id (`berth nodes` lists them)")
    drain.add_argument("--wait", action="store_true", help="wait until no instance is left on the node")
    drain.add_argument("--timeout", type=float, default=300, metavar="S",
                       help="with --wait: give up after S seconds (default 300; exit 1)")


def add_undrain(commands) -> None:
    undrain = command(
        commands, "undrain",
        "make a drained node READY again",
        "Mark NODE READY: new instances may be placed there again (instances that moved away stay where "
        "they are).",
        "berth undrain gpu-2",
        run_undrain,
    )
    undrain.add_argument("node", metavar="NODE", help="the node's id")
