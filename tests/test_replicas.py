"""Replicas against the real stack (Temporal, Traefik, llama.cpp): several instances behind one
route, counted on the engine side; scale while serving; refusals with the numbers; a worker killed
mid-scale; stop with everything gone."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError

from berth.domain.spec import MAX_REPLICAS, DeploymentSpec
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import RECONFIGURE_UPDATE, SCALE_UPDATE, workflow_id
from berth.node.ports import PortRegistry, port_is_free
from berth.node.route_table import RouteTable
from berth.testing.harness import (
    UNANSWERED_QUERY,
    RunningStack,
    deployment_state,
    engine_processes,
    start_deployment,
    wait_for_status,
)

# A stack of its own: berth plans 258 MiB for the tiny model (its fixed 256 MiB of runtime overhead),
# so three of them need more than the shared stack's 640 MiB; 1 GiB holds three, not four.
REPLICA_NODE_MEMORY = "1GiB"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    running = RunningStack(
        tmp_path_factory.mktemp("berth-replicas-home"), extra_env={"BERTH_MEMORY_LIMIT": REPLICA_NODE_MEMORY}
    ).start()
    yield running
    code, leftovers = running.stop_and_reap()
    assert code == 0, "berth up did not exit cleanly:\n" + "".join(running.output)
    assert not leftovers, f"processes left behind by the stack: {leftovers}"


@pytest.fixture(scope="module")
async def client(stack):
    return await stack.client()


@pytest.fixture(scope="module")
def api(stack):
    with stack.api() as http:
        yield http

# every request an engine serves: llama.cpp's Prometheus counter of completed generations
METRICS_ARGS = ["--metrics"]


@pytest.fixture(autouse=True)
async def stopped_after(client, name):
    """A test that failed half-way leaves its deployment stopped: its reservations would otherwise
    make every later test of this module fail OOM on the 1 GiB node."""
    yield
    handle = client.get_workflow_handle(workflow_id(name))
    try:
        await handle.signal("stop")
        await asyncio.wait_for(handle.result(), 60)
    except (RPCError, WorkflowFailureError, asyncio.TimeoutError):
        pass  # never started, or already ended


async def until(client, name: str, predicate, timeout_s: float = 60) -> DeploymentState:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = await deployment_state(client, name)
        except RPCError as error:  # its worker was just killed: Temporal gave up waiting for it
            if error.status not in UNANSWERED_QUERY or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        if predicate(state):
            return state
        if time.monotonic() > deadline or state.status in (S.FAILED, S.MUST_REDOWNLOAD, S.STOPPED):
            raise AssertionError(f"{name}: condition not met; last state:\n{state.model_dump_json(indent=1)}")
        await asyncio.sleep(0.05)


def served_requests(port: int) -> float:
    """Generations this engine ran, from its own /metrics (counted by llama.cpp, not by berth or the
    gateway): each request of max_tokens=1 predicts one token."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts = dict(re.findall(r"^(llamacpp:[a-z_]+)\s+([0-9.e+]+)$", text, re.M))
    return float(counts["llamacpp:tokens_predicted_total"])


def route_servers(stack, name: str) -> list[str]:
    route = RouteTable(stack.settings.routes_dir).route(name)
    if route is None:
        return []
    return [server["url"] for server in route["http"]["services"][f"berth-{name}"]["loadBalancer"]["servers"]]


class Load:
    """Chat requests through the gateway at a steady rate, in a thread; counts what failed."""

    def __init__(self, stack, name: str, rate: float = 10.0):
        self.stack, self.name, self.interval = stack, name, 1.0 / rate
        self.ok, self.failed = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    def _run(self) -> None:
        token = self.stack.api_token()
        url = f"{self.stack.settings.gateway_url}/models/{self.name}/v1/chat/completions"
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = http.post(url, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{response.status_code} {response.text[:120]}")
                except httpx.HTTPError as error:
                    self.failed.append(repr(error))
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


async def stop_and_check_gone(stack, client, name: str, state: DeploymentState) -> None:
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal("stop")
    await handle.result()
    final = await deployment_state(client, name)
    assert final.status is S.STOPPED
    assert engine_processes(stack.settings.home, name) == []
    assert all(port_is_free(instance.port) for instance in state.instances if instance.port)
    assert route_servers(stack, name) == []


async def test_three_replicas_serve_behind_one_route_each_a_fair_share(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=3, engine_args=METRICS_ARGS))
    state = await until(client, name, lambda s: s.ready_replicas == 3, timeout_s=90)
    assert state.status is S.DEPLOYED and not state.degraded and state.replicas == 3
    ports = sorted(instance.port for instance in state.instances)
    assert len(set(ports)) == 3
    assert len(engine_processes(stack.settings.home, name)) == 3
    assert sorted(route_servers(stack, name)) == sorted(f"http://127.0.0.1:{port}" for port in ports)
    assert len({instance.log_path for instance in state.instances}) == 3

    before = {port: served_requests(port) for port in ports}
    token = stack.api_token()
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for _ in range(300):
            response = http.post(
                f"{stack.settings.gateway_url}/models/{name}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
            )
            assert response.status_code == 200, response.text
    share = {port: served_requests(port) - before[port] for port in ports}
    total = sum(share.values())
    assert total > 0, share
    assert all(count / total >= 0.20 for count in share.values()), share
    await stop_and_check_gone(stack, client, name, state)


async def test_scale_up_and_down_under_load_drops_nothing(stack, client, tiny_gguf, name, api):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=1024))
    await wait_for_status(client, name, S.DEPLOYED)
    with Load(stack, name, rate=20) as load:
        answer = api.post(f"/v1/deployments/{name}/scale", json={"replicas": 3})
        assert answer.status_code == 202, answer.text
        three = await until(client, name, lambda s: s.ready_replicas == 3 and len(s.route_ports or []) == 3, 90)
        await asyncio.sleep(1.0)
        answer = api.post(f"/v1/deployments/{name}/scale", json={"replicas": 1})
        assert answer.status_code == 202, answer.text
        one = await until(client, name, lambda s: len(s.instances) == 1 and s.ready_replicas == 1, 60)
        await asyncio.sleep(1.0)
    assert load.failed == [] and load.ok > 40, (load.failed[:5], load.ok)
    assert one.instances[0].instance_id == three.instances[0].instance_id, "the oldest stays"
    drained = [t.detail for t in one.transitions if " drained: " in t.detail]
    assert len(drained) == 2 and all("no request in flight" in detail for detail in drained), drained
    assert len(engine_processes(stack.settings.home, name)) == 1
    assert route_servers(stack, name) == [f"http://127.0.0.1:{one.instances[0].port}"]
    gone = [instance.port for instance in three.instances[1:]]
    assert all(port_is_free(port) for port in gone)
    await stop_and_check_gone(stack, client, name, one)


async def test_a_scale_down_waits_for_the_long_answers_in_flight_on_the_instance_it_stops(stack, client, tiny_gguf, name):
    """The drain waits on the engine's own count of requests in flight: long streamed answers that
    the retired instance is still generating end whole (a fixed 1 s drain cut them)."""
    spec = DeploymentSpec(name=name, model=str(tiny_gguf), replicas=2, context_size=4096)
    await start_deployment(client, spec)
    two = await until(client, name, lambda s: s.ready_replicas == 2 and len(s.route_ports or []) == 2, 90)
    # a change of the drain timeout alone replaces no instance
    await client.get_workflow_handle(workflow_id(name)).execute_update(RECONFIGURE_UPDATE, {"drain_timeout_s": 90})
    same = await until(client, name, lambda s: s.spec.drain_timeout_s == 90 and s.rollout is None, 30)
    assert [(i.instance_id, i.pid) for i in same.instances] == [(i.instance_id, i.pid) for i in two.instances]
    token = stack.api_token()
    url = f"{stack.settings.gateway_url}/models/{name}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "ignore_eos": True, "stream": True}

    async def long_answer(http: httpx.AsyncClient) -> tuple[int, int, bool]:
        chunks, done = 0, False
        async with http.stream("POST", url, json=body) as response:
            async for line in response.aiter_lines():
                chunks += line.startswith("data: {")
                done = done or line == "data: [DONE]"
        return response.status_code, chunks, done

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        answers = [asyncio.create_task(long_answer(http)) for _ in range(8)]
        retired = two.instances[1]  # the newest goes
        deadline = time.monotonic() + 20
        while served_in_flight(retired.port) == 0:  # some of the answers are on the one that goes
            assert time.monotonic() < deadline, "no answer reached the second instance"
            await asyncio.sleep(0.05)
        scaled = await client.get_workflow_handle(workflow_id(name)).execute_update(
            SCALE_UPDATE, {"replicas": 1}, result_type=DeploymentState
        )
        assert scaled.spec.replicas == 1
        one = await until(client, name, lambda s: len(s.instances) == 1, 120)
        results = await asyncio.gather(*answers)
    assert all(status == 200 and done and chunks >= 1500 for status, chunks, done in results), results
    drained = [t.detail for t in one.transitions if f"{retired.instance_id} drained: " in t.detail]
    assert len(drained) == 1 and "no request in flight" in drained[0], drained
    assert port_is_free(retired.port) and len(engine_processes(stack.settings.home, name)) == 1
    await stop_and_check_gone(stack, client, name, one)


def served_in_flight(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts = dict(re.findall(r"^(llamacpp:[a-z_]+)\s+([0-9.e+]+)$", text, re.M))
    return int(float(counts["llamacpp:requests_processing"]) + float(counts["llamacpp:requests_deferred"]))


async def test_a_scale_beyond_memory_or_range_is_refused_with_the_reason(stack, client, tiny_gguf, name, api):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=1024))
    state = await wait_for_status(client, name, S.DEPLOYED)
    per, budget = state.memory_per_instance, state.memory_budget
    assert per and budget
    too_many = budget // per + 1
    assert too_many <= MAX_REPLICAS, (per, budget)
    answer = api.post(f"/v1/deployments/{name}/scale", json={"replicas": too_many})
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert f"{too_many} instances do not fit" in message and "each needs" in message, message
    for bad in (-1, MAX_REPLICAS + 1):
        answer = api.post(f"/v1/deployments/{name}/scale", json={"replicas": bad})
        assert answer.status_code == 400, answer.text
    # the same refusal through Temporal's own CLI
    temporal = Path(sys.executable).parent / "temporal"
    cli = subprocess.run(
        [str(temporal), "workflow", "update", "execute", "--address", stack.settings.temporal_address,
         "-w", workflow_id(name), "--name", SCALE_UPDATE, "--input", json.dumps({"replicas": -3})],
        capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode != 0 and "replicas must be 0 or more" in cli.stdout + cli.stderr, cli
    after = await deployment_state(client, name)
    assert after.replicas == 1 and len(after.instances) == 1
    assert len(engine_processes(stack.settings.home, name)) == 1, "the refusal launched something"
    await stop_and_check_gone(stack, client, name, after)


async def test_a_deploy_that_would_oversubscribe_memory_launches_nothing(stack, client, tiny_gguf, name, api):
    answer = api.post("/v1/deployments", json={"name": name, "model": str(tiny_gguf), "replicas": 0})
    assert answer.status_code == 400 and "scale" in answer.json()["error"]["message"], answer.text
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=4))
    state = await wait_for_status(client, name, {S.FAILED, S.DEPLOYED, S.ERROR}, timeout_s=60)
    assert state.status is S.FAILED and state.error.code.value == "OOM", state.error
    assert "4 instances do not fit" in state.error.message and "each needs" in state.error.message, state.error
    assert engine_processes(stack.settings.home, name) == []
    await stop_and_check_gone(stack, client, name, state)


async def test_a_worker_killed_during_a_scale_leaves_exactly_the_desired_engines(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=2, context_size=1024))
    await until(client, name, lambda s: s.ready_replicas == 2, 90)
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.execute_update(SCALE_UPDATE, {"replicas": 3})
    os.kill(stack.worker_pid(), signal.SIGKILL)
    three = await until(client, name, lambda s: s.ready_replicas == 3, 120)
    await handle.execute_update(SCALE_UPDATE, {"replicas": 1})
    await asyncio.sleep(0.3)
    os.kill(stack.worker_pid(), signal.SIGKILL)
    one = await until(client, name, lambda s: len(s.instances) == 1 and s.ready_replicas == 1, 120)
    deadline = time.monotonic() + 20
    while len(engine_processes(stack.settings.home, name)) != 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert len(engine_processes(stack.settings.home, name)) == 1
    assert route_servers(stack, name) == [f"http://127.0.0.1:{one.instances[0].port}"]
    assert all(port_is_free(i.port) for i in three.instances if i.instance_id != one.instances[0].instance_id)
    await stop_and_check_gone(stack, client, name, one)


async def test_reconfigure_rolls_one_instance_at_a_time_under_load(stack, client, tiny_gguf, name, api):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=2, context_size=1024))
    before = await until(client, name, lambda s: s.ready_replicas == 2, 90)
    with Load(stack, name, rate=10) as load:
        answer = api.post(f"/v1/deployments/{name}/retry", json={"context_size": 2048})  # DEPLOYED: it rolls
        assert answer.status_code == 202, answer.text
        after = await until(
            client, name,
            lambda s: s.spec.context_size == 2048 and s.rollout is None and s.ready_replicas == 2 and len(s.instances) == 2,
            120,
        )
        await asyncio.sleep(0.5)
    assert load.failed == [] and load.ok > 10, (load.failed[:5], load.ok)
    old_pids = {instance.pid for instance in before.instances}
    assert not old_pids & {instance.pid for instance in after.instances}, "every instance is new"
    engines = engine_processes(stack.settings.home, name)
    assert len(engines) == 2 and all("--ctx-size 2048" in " ".join(p.cmdline()) for p in engines)
    assert any("rollout done" in t.detail for t in after.transitions)
    await stop_and_check_gone(stack, client, name, after)


async def test_a_rollout_whose_new_instance_fails_rolls_back_while_the_old_ones_serve(
    stack, client, tiny_gguf, garbage_gguf, name
):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=2, context_size=1024))
    before = await until(client, name, lambda s: s.ready_replicas == 2, 90)
    handle = client.get_workflow_handle(workflow_id(name))
    with Load(stack, name, rate=10) as load:
        await handle.execute_update("reconfigure", {"model": str(garbage_gguf)})
        after = await until(client, name, lambda s: (s.rollout or "").startswith("rollout failed"), 90)
        settled = await until(client, name, lambda s: s.ready_replicas == 2 and len(s.instances) == 2, 60)
    assert load.failed == [], load.failed[:5]
    assert after.rollout_error is not None and after.rollout_error.code.value == "MODEL_LOADING_FAILURE", after.rollout
    assert after.rollout_error.guidance
    assert settled.spec.model == str(tiny_gguf), "the spec stays the old one"
    assert {i.instance_id for i in settled.instances} == {i.instance_id for i in before.instances}
    assert len(engine_processes(stack.settings.home, name)) == 2
    await stop_and_check_gone(stack, client, name, settled)


async def test_stop_during_a_rollout_leaves_nothing(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=2, context_size=1024))
    await until(client, name, lambda s: s.ready_replicas == 2, 90)
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.execute_update("reconfigure", {"context_size": 1536})
    during = await until(client, name, lambda s: len(s.instances) == 3, 60)
    await handle.signal("stop")
    await handle.result()
    final = await deployment_state(client, name)
    assert final.status is S.STOPPED
    assert engine_processes(stack.settings.home, name) == []
    assert route_servers(stack, name) == []
    assert all(port_is_free(i.port) for i in during.instances if i.port)


async def test_an_engine_killed_under_load_drops_no_request_and_rejoins(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=2, context_size=1024))
    before = await until(client, name, lambda s: s.ready_replicas == 2, 90)
    victim = before.instances[1]
    with Load(stack, name, rate=20) as load:
        await asyncio.sleep(1.0)
        os.kill(victim.pid, signal.SIGKILL)
        after = await until(
            client, name,
            lambda s: s.ready_replicas == 2 and s.instances[1].pid not in (None, victim.pid) and s.instances[1].routed,
            60,
        )
        await asyncio.sleep(1.0)
    assert load.failed == [], load.failed[:5]
    assert after.instances[1].restarts == 1 and after.status is S.DEPLOYED
    assert sorted(route_servers(stack, name)) == sorted(f"http://127.0.0.1:{i.port}" for i in after.instances)
    await stop_and_check_gone(stack, client, name, after)


async def test_a_worker_killed_during_a_rollout_ends_with_the_new_spec_and_nothing_left(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), replicas=2, context_size=1024))
    before = await until(client, name, lambda s: s.ready_replicas == 2, 90)
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.execute_update("reconfigure", {"context_size": 1280})
    await until(client, name, lambda s: len(s.instances) == 3, 60)
    os.kill(stack.worker_pid(), signal.SIGKILL)
    after = await until(
        client, name, lambda s: s.spec.context_size == 1280 and s.rollout is None and len(s.instances) == 2
        and s.ready_replicas == 2, 120,
    )
    deadline = time.monotonic() + 20
    while len(engine_processes(stack.settings.home, name)) != 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    engines = engine_processes(stack.settings.home, name)
    assert len(engines) == 2 and all("--ctx-size 1280" in " ".join(p.cmdline()) for p in engines)
    assert sorted(route_servers(stack, name)) == sorted(f"http://127.0.0.1:{i.port}" for i in after.instances)
    registry = PortRegistry(stack.settings.home / "ports.sqlite", stack.settings.port_range)
    reserved = {instance for instance in registry.reserved() if instance.startswith(f"{name}-")}
    assert reserved == {i.instance_id for i in after.instances}, "no port left reserved for an old instance"
    assert not {i.instance_id for i in before.instances} & reserved
    await stop_and_check_gone(stack, client, name, after)
