"""Several nodes on one host against real servers (berth.testing.cluster_harness): `berth up` on
127.0.0.21 and `berth join` on .22 and .23, each with its own home, ports and BERTH_MEMORY_LIMIT so
that each node holds exactly one instance of the tiny GGUF. Placement (spread, capacity, per-node
reasons), node loss (kill -9, SIGSTOP past the grace, fencing on SIGCONT), a worker restart within
the grace, and drain. Requests are counted on the engines themselves (their own ports): routing
between gateways is the mesh's (tests/test_cluster_routing*.py)."""

import asyncio
import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from berth.domain.cluster import CLUSTER_WORKFLOW_ID, DRAIN_UPDATE, NODES_QUERY, UNDRAIN_UPDATE, ClusterView, NodeStatus, NodeView
from berth.domain.spec import DeploymentSpec
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus as S
from berth.domain.status import InstanceStatus
from berth.domain.temporal_names import STOP_SIGNAL, workflow_id
from berth.node.memory_plan import plan_for
from berth.node.route_table import RouteTable
from berth.testing.cluster_harness import Cluster
from berth.testing.gateway_nodes import served_requests
from berth.settings import Settings
from berth.testing.harness import deployment_state, free_port, start_deployment
from berth.worker.gateway import static_config

ADDRESSES = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
GRACE_S = 4.0
RECONCILE_S = 5
CONTEXT = 1024
# Temporal's timers fire up to about a second late on the dev server; the workflow task after it
# needs a worker; under the shared CPU of the test machine, allow a little more
SLACK_S = 3.0


def where_the_gateway_binds(env: dict[str, str]) -> dict[str, str]:
    """BERTH_GATEWAY_URL where this tree's gateway binds (before the mesh, on 127.0.0.1 whatever
    the node's address): readiness is checked through it."""
    web = static_config(Settings.from_env(env))["entryPoints"]["web"]["address"]
    return {"BERTH_GATEWAY_URL": f"http://{web}"}


class CoreCluster(Cluster):
    def join_env(self, node_id: str, address: str) -> dict[str, str]:
        env = super().join_env(node_id, address)
        return {**env, **where_the_gateway_binds(env)}


@pytest.fixture(scope="module")
def per_instance(tiny_gguf) -> int:
    plan = plan_for(str(tiny_gguf), "llamacpp", CONTEXT)
    assert plan is not None and plan.estimate_bytes > 0
    return plan.estimate_bytes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, per_instance):
    limit = str(int(per_instance * 1.5))  # one instance per node, not two
    env = {"BERTH_MEMORY_LIMIT": limit, "BERTH_NODE_GRACE_S": str(GRACE_S), "BERTH_RECONCILE_INTERVAL_S": str(RECONCILE_S)}
    port = str(free_port())
    first = {"BERTH_GATEWAY_PORT": port, **where_the_gateway_binds({
        "BERTH_GATEWAY_PORT": port, "BERTH_NODE_ADDRESS": ADDRESSES[0], "BERTH_HOME": "/nonexistent"})}
    home = tmp_path_factory.mktemp("core-cluster")
    with CoreCluster(home, ADDRESSES, extra_env=env, node_env={"n1": first}, share_api_token=True) as running:
        running.start()
        yield running


@pytest.fixture(scope="module")
async def client(cluster):
    return await cluster.client()


async def view(client) -> ClusterView:
    return await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).query(NODES_QUERY, result_type=ClusterView)


async def until_nodes(client, predicate, timeout_s: float, what: str) -> ClusterView:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = await view(client)
        if predicate(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s: {seen.model_dump_json(indent=1)[:3000]}")
        await asyncio.sleep(0.1)


async def until(client, name: str, predicate, timeout_s: float, what: str = "") -> DeploymentState:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = await deployment_state(client, name)
            if predicate(state):
                return state
        except Exception:  # noqa: BLE001 - a query while the worker restarts
            state = None
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} {what}: not within {timeout_s} s: {state.model_dump_json(indent=1)[-4000:] if state else None}")
        await asyncio.sleep(0.2)


def status_of(seen: ClusterView, node: str) -> NodeStatus:
    return next(n.status for n in seen.nodes if n.facts.node_id == node)


def engine_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def stop(client, name: str) -> DeploymentState:
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal(STOP_SIGNAL)
    return await asyncio.wait_for(handle.result(result_type=DeploymentState), 120)


async def stop_all(client, names) -> None:
    await asyncio.gather(*(stop(client, name) for name in names), return_exceptions=True)
    await until_nodes(client, lambda v: not any(n.instances for n in v.nodes), 60, "every reservation released")


async def test_three_nodes_three_replicas_one_per_node(cluster, client, tiny_gguf, per_instance):
    seen = await until_nodes(client, lambda v: len(v.nodes) == 3 and all(n.status is NodeStatus.READY for n in v.nodes),
                             60, "three READY nodes")
    assert {n.facts.gateway_url for n in seen.nodes} == {cluster.gateway_url(node) for node in cluster.node_ids}
    assert all(n.facts.capacity_bytes == int(per_instance * 1.5) for n in seen.nodes), seen
    name = "spread3"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=3, context_size=CONTEXT))
    state = await until(client, name, lambda s: s.ready_replicas == 3, 180, "3 serving")
    assert sorted(i.node for i in state.instances) == ["n1", "n2", "n3"], [i.node for i in state.instances]
    assert set(state.routing) == {"n1", "n2", "n3"}
    assert all(engine_answers(i.port) for i in state.instances)
    for instance in state.instances:  # each engine runs under its own node's home
        home = cluster.settings(instance.node).home
        assert str(home) in " ".join(psutil.Process(instance.pid).cmdline()) or any(
            str(home) == p.environ().get("BERTH_HOME") for p in [psutil.Process(instance.pid)]
        )
    seen = await view(client)
    by_node = {n.facts.node_id: n for n in seen.nodes}
    for instance in state.instances:
        assert by_node[instance.node].instances == [instance.instance_id]
        assert by_node[instance.node].reserved_bytes == state.memory_per_instance == per_instance
    # a fourth cannot fit: the scale validator says so with the numbers
    handle = client.get_workflow_handle(workflow_id(name))
    with pytest.raises(Exception) as refused:
        await handle.execute_update("scale", {"replicas": 4})
    assert "4 instances do not fit the cluster" in str(refused.value.cause), refused.value.cause
    await stop_all(client, [name])


async def test_twice_the_capacity_at_once_places_exactly_the_capacity(cluster, client, tiny_gguf):
    names = [f"burst{i}" for i in range(6)]  # 3 nodes x 1 instance each
    await asyncio.gather(*(
        start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=CONTEXT)) for name in names
    ))
    states = [await until(client, name, lambda s: s.status in (S.DEPLOYED, S.FAILED), 240, "settled") for name in names]
    deployed = [s for s in states if s.status is S.DEPLOYED]
    failed = [s for s in states if s.status is S.FAILED]
    assert len(deployed) == 3 and len(failed) == 3, [(s.name, s.status.value) for s in states]
    assert sorted(s.instances[0].node for s in deployed) == ["n1", "n2", "n3"]
    for state in failed:
        assert state.error.code.value == "OOM", state.error
        for node in ("n1", "n2", "n3"):
            assert f"{node}: needs" in state.error.message, state.error.message
        assert not state.instances[0].node and state.instances[0].pid is None
    seen = await view(client)
    assert all(len(n.instances) == 1 and n.reserved_bytes <= n.facts.capacity_bytes for n in seen.nodes), seen
    await stop_all(client, names)


async def test_a_killed_node_is_down_within_the_grace_and_its_instance_serves_elsewhere(cluster, client, tiny_gguf):
    name = "loss"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=CONTEXT, nodes=["n2", "n3"]))
    before = await until(client, name, lambda s: s.ready_replicas == 1, 120, "serving")
    victim = before.instances[0].node
    killed_at = time.monotonic()
    cluster.kill_node(victim)
    seen = await until_nodes(client, lambda v: status_of(v, victim) is NodeStatus.DOWN, GRACE_S + SLACK_S + 5, "DOWN")
    down_after = time.monotonic() - killed_at
    assert down_after <= GRACE_S + SLACK_S, down_after
    after = await until(client, name, lambda s: s.ready_replicas == 1 and s.instances[0].node != victim, 60, "replaced")
    assert after.replaced == 1 and after.instances[0].instance_id != before.instances[0].instance_id
    assert after.instances[0].restarts == 0, "a replacement is not an engine restart"
    assert engine_answers(after.instances[0].port)
    assert not any(n.instances for n in seen.nodes if n.facts.node_id == victim)
    print(f"node loss: DOWN after {down_after:.1f} s, serving elsewhere after {time.monotonic() - killed_at:.1f} s")
    await stop_all(client, [name])
    cluster.restart_node(victim)
    await until_nodes(client, lambda v: status_of(v, victim) is NodeStatus.READY, 60, "back")


async def test_a_worker_restart_within_the_grace_moves_nothing(cluster, client, tiny_gguf):
    name = "stay"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=CONTEXT, node="n3"))
    before = await until(client, name, lambda s: s.ready_replicas == 1, 120, "serving")
    worker = next(p for p in cluster.node_processes("n3") if "berth.worker.main" in " ".join(p.cmdline()))
    worker.kill()  # its `berth join` starts a new one
    deadline = time.monotonic() + GRACE_S + SLACK_S + 3
    while time.monotonic() < deadline:
        seen = await view(client)
        assert status_of(seen, "n3") is not NodeStatus.DOWN, "a restart within the grace made the node DOWN"
        await asyncio.sleep(0.2)
    after = await deployment_state(client, name)
    assert [i.instance_id for i in after.instances] == [i.instance_id for i in before.instances]
    assert after.instances[0].pid == before.instances[0].pid and after.replaced == 0
    assert status_of(await view(client), "n3") is NodeStatus.READY
    await stop_all(client, [name])


class GatewayLoad:
    """Chats through one gateway in a thread, about 20 a second, until stopped: what answered 200."""

    def __init__(self, gateway: str, name: str, token: str):
        self.gateway, self.name, self.token = gateway, name, token
        self.ok, self.other = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": self.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        with httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    answer = http.post(f"{self.gateway}/models/{self.name}/v1/chat/completions", json=body)
                    if answer.status_code == 200:
                        self.ok += 1
                    else:
                        self.other += 1
                except httpx.HTTPError:
                    self.other += 1
                self._stop.wait(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


async def test_a_frozen_node_is_replaced_and_fences_its_engine_when_it_thaws(cluster, client, tiny_gguf):
    """SIGSTOP of every process of the node past the grace: replaced elsewhere. Chats go through n1's
    gateway from DOWN and the route change that follows it on; the stale engine's own count of generations (llama.cpp's /metrics) is read
    before the freeze, after SIGCONT of the engine alone (its node's worker and gateway still frozen),
    and then as long as it answers after the whole node is thawed, until its worker fences it: no
    gateway sent it a request after DOWN. (The last read can precede the engine's end by ~20 ms.)"""
    name = "frozen"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=CONTEXT, nodes=["n2", "n3"]))
    before = await until(client, name, lambda s: s.ready_replicas == 1, 120, "serving")
    victim, stale, stale_port = before.instances[0].node, before.instances[0].pid, before.instances[0].port
    served_before = served_requests(stale_port)
    load = GatewayLoad(cluster.gateway_url("n1"), name, cluster.first.api_token())
    cluster.freeze_node(victim)
    try:
        await until_nodes(client, lambda v: status_of(v, victim) is NodeStatus.DOWN, GRACE_S + SLACK_S + 5, "DOWN")
        # from the moment n1's route no longer names the frozen node: a request n1 sent there
        # before (DOWN is not yet the route change) waits in the frozen gateway's socket and is
        # served by the stale engine when the node thaws (seen once under the full suite's load)
        await until_route_leaves(cluster, "n1", name, cluster.gateway_url(victim), 30)
        load.start()
        after = await until(client, name, lambda s: s.ready_replicas == 1 and s.instances[0].node != victim, 60, "replaced")
        os.kill(stale, signal.SIGCONT)
        served_while_frozen = served_requests(stale_port)
    finally:
        cluster.thaw_node(victim)
    thawed = time.monotonic()
    reads = [served_while_frozen]
    try:
        while alive(stale):
            assert time.monotonic() - thawed < RECONCILE_S + SLACK_S, "the stale engine still runs after one reconcile period"
            try:
                reads.append(served_requests(stale_port))
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
        fenced_after = time.monotonic() - thawed
        await asyncio.sleep(1.0)
    finally:
        load.stop()
    print(f"fenced: the stale engine stopped {fenced_after:.1f} s after SIGCONT; its generations "
          f"{served_before:.0f} before the freeze, {reads} after; {load.ok} chats through n1 answered from DOWN on")
    assert set(reads) == {served_before}, "a gateway sent the stale engine a request after DOWN"
    assert load.ok > 0, "the replacement answered through n1's gateway"
    await until_nodes(client, lambda v: status_of(v, victim) is NodeStatus.READY, 30, "joined again")
    assert engine_answers(after.instances[0].port)
    await stop_all(client, [name])


async def until_route_leaves(cluster, node: str, name: str, gateway: str, timeout_s: float) -> None:
    table = RouteTable(cluster.settings(node).routes_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        route = table.route(name) or {}
        urls = [server["url"] for service in route.get("http", {}).get("services", {}).values()
                for server in service.get("loadBalancer", {}).get("servers", [])]
        if not any(url.startswith(gateway) for url in urls):
            return
        assert time.monotonic() < deadline, f"{node}'s route of {name} still names {gateway}: {urls}"
        await asyncio.sleep(0.02)


async def test_drain_moves_the_instance_with_a_surge(cluster, client, tiny_gguf):
    name = "drained"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=CONTEXT, nodes=["n2", "n3"]))
    before = await until(client, name, lambda s: s.ready_replicas == 1, 120, "serving")
    source = before.instances[0].node
    cluster_handle = client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
    drained = await cluster_handle.execute_update(DRAIN_UPDATE, source, result_type=NodeView)
    assert drained.status is NodeStatus.DRAINING
    serving_counts = []
    deadline = time.monotonic() + 120
    while True:
        state = await deployment_state(client, name)
        serving_counts.append(state.ready_replicas)
        if len(state.instances) == 1 and state.instances[0].node != source and state.ready_replicas == 1:
            break
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.1)
    assert min(serving_counts) >= 1, "an instance served throughout the move"
    assert state.replaced == 1 and state.instances[0].status is InstanceStatus.DEPLOYED
    assert not psutil.pid_exists(before.instances[0].pid) or psutil.Process(before.instances[0].pid).status() == psutil.STATUS_ZOMBIE
    await cluster_handle.execute_update(UNDRAIN_UPDATE, source, result_type=NodeView)
    await stop_all(client, [name])


async def test_no_process_is_left(cluster):
    left = cluster.close()
    assert left == [], left
