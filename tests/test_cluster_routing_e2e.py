"""Every gateway serves every deployment, on whole nodes (`berth up` on 127.0.0.34, `berth join` on
.35 and .36: berth.testing.cluster_harness), with the cluster workflow placing one instance per
node and fanning the route out to every gateway. Requests are counted on the engines (llama.cpp's
/metrics). The gateway pieces alone, on real Traefik and engines: tests/test_cluster_routing.py."""

import asyncio
import threading
import time

import httpx
import pytest

cluster_harness = pytest.importorskip("berth.testing.cluster_harness")  # the join piece's harness

from berth.domain.spec import DeploymentSpec  # noqa: E402
from berth.domain.state import DeploymentState  # noqa: E402
from berth.domain.temporal_names import STOP_SIGNAL, workflow_id  # noqa: E402
from berth.node.memory_plan import plan_for  # noqa: E402
from berth.testing.gateway_nodes import served_requests  # noqa: E402
from berth.testing.harness import deployment_state, start_deployment  # noqa: E402

ADDRESSES = ["127.0.0.34", "127.0.0.35", "127.0.0.36"]
CONTEXT = 1024
GRACE_S = 4.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_gguf):
    plan = plan_for(str(tiny_gguf), "llamacpp", CONTEXT)
    env = {"BERTH_MEMORY_LIMIT": str(int(plan.estimate_bytes * 1.5)), "BERTH_NODE_GRACE_S": str(GRACE_S)}
    with cluster_harness.Cluster(tmp_path_factory.mktemp("mesh-cluster"), ADDRESSES, extra_env=env) as running:
        running.start()
        yield running


@pytest.fixture(scope="module")
async def client(cluster):
    return await cluster.client()


async def until(client, name: str, predicate, timeout_s: float) -> DeploymentState:
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        try:
            state = await deployment_state(client, name)
            if predicate(state):
                return state
        except Exception:  # noqa: BLE001 - a query while a worker restarts
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name}: not within {timeout_s} s: {state.model_dump_json(indent=1)[-3000:] if state else None}")


def chat(http: httpx.Client, gateway: str, name: str) -> httpx.Response:
    return http.post(f"{gateway}/models/{name}/v1/chat/completions",
                     json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})


async def test_every_nodes_gateway_reaches_every_nodes_instance(cluster, client, tiny_gguf):
    name = "mesh3"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=3, context_size=CONTEXT))
    state = await until(client, name, lambda s: s.ready_replicas == 3, 180)
    assert sorted(i.node for i in state.instances) == ["n1", "n2", "n3"]
    await asyncio.sleep(1.0)  # the last route change reaches every gateway within 1 s
    ports = {i.instance_id: i.port for i in state.instances}
    token = cluster.first.api_token()
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for node in cluster.node_ids:
            gateway = cluster.gateway_url(node)
            before = {i: served_requests(p) for i, p in ports.items()}
            for _ in range(60):
                response = chat(http, gateway, name)
                assert response.status_code == 200, (node, response.text)
            share = {i: served_requests(p) - before[i] for i, p in ports.items()}
            assert sum(share.values()) == 60 and all(c >= 6 for c in share.values()), (node, share)
            assert chat(httpx.Client(timeout=30), gateway, name).status_code == 401, "no token, no answer"
    await stop(client, name)


async def test_a_killed_node_costs_no_request_through_a_surviving_gateway(cluster, client, tiny_gguf):
    """kill -9 of every process of n3 (worker, gateway, engine) under load through n1's and n2's
    gateways: the retry and the passive check hide it until the node is DOWN and its instance left
    every route."""
    name = "meshkill"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=3, context_size=CONTEXT))
    state = await until(client, name, lambda s: s.ready_replicas == 3, 180)
    await asyncio.sleep(1.0)
    token = cluster.first.api_token()
    failed, ok, stop_load = [], [0], threading.Event()

    def load(gateway: str) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            while not stop_load.is_set():
                try:
                    response = chat(http, gateway, name)
                    if response.status_code == 200:
                        ok[0] += 1
                    else:
                        failed.append((gateway, response.status_code, response.text[:100]))
                except httpx.HTTPError as error:
                    failed.append((gateway, repr(error)))
                stop_load.wait(0.05)

    threads = [threading.Thread(target=load, args=(cluster.gateway_url(n),), daemon=True) for n in ("n1", "n2")]
    for thread in threads:
        thread.start()
    try:
        await asyncio.sleep(2.0)
        cluster.kill_node("n3")
        lost = next(i.instance_id for i in state.instances if i.node == "n3")
        killed_at = time.monotonic()
        await until(client, name, lambda s: lost not in [i.instance_id for i in s.instances], 60)
        out_after = time.monotonic() - killed_at
        await asyncio.sleep(2.0)
    finally:
        stop_load.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failed == [], failed[:5]
    assert ok[0] > 50, ok
    print(f"n3 killed: its instance left the deployment after {out_after:.1f} s (grace {GRACE_S} s); "
          f"{ok[0]} requests through n1 and n2, 0 failed")
    await stop(client, name)


async def stop(client, name: str) -> None:
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal(STOP_SIGNAL)
    await asyncio.wait_for(handle.result(), 120)
