"""P9: node loss (docs/cluster.md). Three nodes on this host (berth.testing.cluster_harness:
`berth up` on 127.0.0.27, `berth join` on .28 and .29, the default grace BERTH_NODE_GRACE_S=8).
Two instances of the tiny GGUF on different nodes; 20 chat requests/s through the gateway of the
node that survives; then kill -9 of every process of the other instance's node (worker, gateway,
engine, its `berth join`):

- time to DOWN: from the kill to the cluster's view saying DOWN (the `nodes` query, polled every
  50 ms); target: within the grace + 2 s (the issue's goal: found within 10 s with the default 8);
- time until the replacement serves: from the kill to a new instance, on another node, DEPLOYED and
  in the route; target: grace + a bare engine start + 1 s (the bare start measured here, as P1 does);
- failed requests through the surviving gateway during it all; target 0. This needs every gateway to
  route to every node's instances (the mesh, berth/node/routes.py): the row says whether the
  surviving gateway's route did span nodes before the kill; where it did not, 0 failed only shows
  that the surviving node's own instance kept serving.

The anchors: GPUStack marks a worker NOT_READY after 150 s and reschedules after 300 s; Xinference
finds a dead worker after ~35 s and reschedules nothing.
"""

import asyncio
import time
from pathlib import Path

import psutil

from bench.chat_load import open_loop_chats, until_state
from bench.common import Bench, Row, bare_argv, ms, percentile, spawn_bare, spec, stop_bare, wait_healthy
from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODES_QUERY, ClusterView, NodeStatus
from berth.node.route_table import RouteTable
from berth.settings import Settings
from berth.testing.cluster_harness import Cluster
from berth.testing.harness import free_port, start_deployment
from berth.worker.gateway import static_config

IDS = {"P9"}
ADDRESSES = ["127.0.0.27", "127.0.0.28", "127.0.0.29"]
RATE = 20.0
GRACE_S = 8.0


def where_the_gateway_binds(env: dict[str, str]) -> dict[str, str]:
    """BERTH_GATEWAY_URL where this tree's gateway binds (on 127.0.0.1 before the mesh)."""
    web = static_config(Settings.from_env(env))["entryPoints"]["web"]["address"]
    return {"BERTH_GATEWAY_URL": f"http://{web}"}


class BenchCluster(Cluster):
    def join_env(self, node_id: str, address: str) -> dict[str, str]:
        env = super().join_env(node_id, address)
        return {**env, **where_the_gateway_binds(env)}


def _cluster(bench: Bench) -> BenchCluster:
    port = str(free_port())
    first = {"BERTH_GATEWAY_PORT": port, **where_the_gateway_binds(
        {"BERTH_GATEWAY_PORT": port, "BERTH_NODE_ADDRESS": ADDRESSES[0], "BERTH_HOME": "/nonexistent"})}
    base = bench.workdir / "p9"
    cluster = BenchCluster(base, ADDRESSES, extra_env={"BERTH_NODE_GRACE_S": str(GRACE_S)},
                           node_env={"n1": first}, share_api_token=True)
    bench.homes.extend(base / node for node in cluster.node_ids)
    return cluster


async def _view(client) -> ClusterView:
    return await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).query(NODES_QUERY, result_type=ClusterView)


def _spans_nodes(settings: Settings, deployment: str) -> bool:
    """Whether this node's gateway route lists servers behind other nodes' gateways (the mesh)."""
    return "/_berth/peer/" in str(RouteTable(settings.routes_dir).route(deployment) or "")


async def _load(url: str, headers: dict, stop: asyncio.Event) -> tuple[list[float], list[str]]:
    return await open_loop_chats(url, headers, RATE, lambda: not stop.is_set())


async def _bare_start(bench: Bench, model: Path, template: list[str] | None) -> float:
    port = free_port()
    started = time.perf_counter()
    popen = spawn_bare(bench, bare_argv(model, port, template), bench.workdir / "p9-bare.log")
    try:
        return await asyncio.to_thread(wait_healthy, port, popen, started)
    finally:
        stop_bare(popen)


async def run(bench: Bench) -> None:
    model = bench.tiny_model()
    cluster = _cluster(bench)
    with cluster:
        await asyncio.to_thread(cluster.start)
        client = await cluster.client()
        name = "p9-node-loss"
        await start_deployment(client, spec(name, model, replicas=2, context_size=1024))
        state = await until_state(client, name, lambda s: s.ready_replicas == 2)
        nodes = sorted(i.node for i in state.instances)
        if len(set(nodes)) != 2:
            raise RuntimeError(f"the two instances are not on two nodes: {nodes}")
        victim = next(i for i in state.instances if i.node != "n1") if "n1" in nodes else state.instances[1]
        survivor = next(i for i in state.instances if i.instance_id != victim.instance_id)
        template = psutil.Process(survivor.pid).cmdline() if survivor.pid else None
        bare_s = await _bare_start(bench, model, template)
        spans = _spans_nodes(cluster.settings(survivor.node), name)
        gateway = cluster.settings(survivor.node).gateway_url
        url = f"{gateway}/models/{name}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {cluster.first.api_token()}"}
        stop = asyncio.Event()
        load = asyncio.ensure_future(_load(url, headers, stop))
        await asyncio.sleep(3.0)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill_node, victim.node)
        down_s = None
        while time.monotonic() - killed_at < GRACE_S + 30:
            view = await _view(client)
            if any(n.facts.node_id == victim.node and n.status is NodeStatus.DOWN for n in view.nodes):
                down_s = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.05)
        after = await until_state(client, name, lambda s: s.ready_replicas == 2 and all(
            i.node != victim.node for i in s.instances), GRACE_S + 60)
        serving_s = time.monotonic() - killed_at
        replaced = after.ready_replicas == 2 and all(i.node != victim.node for i in after.instances)
        await asyncio.sleep(2.0)
        stop.set()
        latencies, failures = await load
    target_replaced = GRACE_S + bare_s + 1.0
    bench.add(Row(
        "P9", f"node kill -9 -> DOWN (grace {GRACE_S:g} s)", f"<= {GRACE_S + 2:g} s",
        f"{down_s:.2f} s" if down_s is not None else "not DOWN", "-", "GPUStack 150 s, Xinference ~35 s",
        passed=down_s is not None and down_s <= GRACE_S + 2,
        values={"down_s": down_s},
    ))
    bench.add(Row(
        "P9", "node kill -9 -> its instance serves on another node", f"<= grace + bare start + 1 s = {target_replaced:.1f} s",
        f"{serving_s:.2f} s" if replaced else "NOT replaced", f"bare start {bare_s:.2f} s",
        "GPUStack reschedules after 300 s, Xinference never",
        passed=replaced and serving_s <= target_replaced,
        values={"serving_s": serving_s, "bare_start_s": bare_s},
        notes=[f"victim {victim.node}, survivor {survivor.node}; replaced on {[i.node for i in after.instances]}"],
    ))
    bench.add(Row(
        "P9", f"failed requests through the surviving gateway, {RATE:g} req/s", "0 failed",
        f"{len(failures)} failed of {len(latencies) + len(failures)}, p99 {ms(percentile(latencies, 99)) if latencies else '-'}",
        "-", "route spans nodes" if spans else "route NOT across nodes (no mesh in this tree)",
        passed=not failures if spans else None,
        values={"failures": failures[:20], "spans_nodes": spans},
    ))
