"""The deployment pipeline end to end, against the real stack: Temporal, Traefik, llama.cpp."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from temporalio.client import WorkflowExecutionStatus

from berth.node.ports import PortRegistry, port_is_free
from berth.domain.errors import ErrorCode
from berth.domain.spec import DeploymentSpec, RestartPolicy
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus as S
from berth.testing.harness import (
    deployment_state,
    engine_processes,
    start_deployment,
    until_restarted_or_down,
    wait_for_status,
)
from berth.domain.temporal_names import workflow_id
from berth.node.routes import routed

QUICK_RESTARTS = RestartPolicy(max_attempts=2, backoff_initial_s=0.2, backoff_max_s=0.5)


async def eventually(check, timeout_s: float = 10, poll_s: float = 0.1):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(poll_s)


def temporal_list(stack, query: str) -> list[str]:
    temporal = Path(sys.executable).parent / "temporal"
    out = subprocess.run(
        [str(temporal), "workflow", "list", "--address", stack.settings.temporal_address,
         "--query", query, "-o", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = json.loads(out or "[]")
    return [row["execution"]["workflowId"] for row in rows]


async def deploy(client, name: str, model: Path | str, **fields) -> DeploymentState:
    await start_deployment(client, DeploymentSpec(name=name, model=str(model), **fields))
    return await wait_for_status(client, name, {S.DEPLOYED, S.FAILED, S.MUST_REDOWNLOAD})


async def stop(client, name: str) -> DeploymentState:
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal("stop")
    await handle.result()
    return await deployment_state(client, name)


async def test_deploy_serves_through_the_gateway_and_shows_in_temporal(stack, client, tiny_gguf, name):
    state = await deploy(client, name, tiny_gguf)
    assert state.status is S.DEPLOYED, state.error
    assert state.engine == "llamacpp"
    assert state.endpoint == f"{stack.settings.gateway_url}/models/{name}/v1"
    assert state.instances[0].status.value == "DEPLOYED"
    assert [t.status for t in state.transitions][:4] == [S.REQUESTED, S.DEPLOYING, S.INITIALIZING, S.DEPLOYED]

    response = stack.chat(name)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"

    # the search attribute says what the query says (visibility lags by a second or so)
    listed = await eventually(lambda: workflow_id(name) in temporal_list(stack, "BerthStatus='DEPLOYED'"))
    assert listed, "temporal workflow list does not show the deployment as DEPLOYED"
    assert workflow_id(name) in temporal_list(stack, f"BerthEngine='llamacpp' AND BerthModel='{tiny_gguf}'")
    await stop(client, name)


async def test_stop_leaves_nothing_behind(stack, client, tiny_gguf, name):
    state = await deploy(client, name, tiny_gguf)
    assert state.status is S.DEPLOYED
    pid, port = state.pid, state.port
    assert name in routed(stack.settings.routes_dir) and psutil.pid_exists(pid)

    state = await stop(client, name)
    assert state.status is S.STOPPED
    assert state.pid is None and state.port is None and state.endpoint is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not engine_processes(stack.home, name)
    assert port_is_free(port)
    registry = PortRegistry(stack.settings.home / "ports.sqlite", stack.settings.port_range)
    assert state.instances[0].instance_id not in registry.reserved()
    assert name not in routed(stack.settings.routes_dir)
    gone = await eventually(lambda: stack.chat(name).status_code == 404, timeout_s=5)
    assert gone, "the gateway still routes the stopped deployment"
    assert workflow_id(name) in await_list(stack, "BerthStatus='STOPPED'")


def await_list(stack, query):
    import time

    deadline = time.monotonic() + 10
    while True:
        found = temporal_list(stack, query)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


async def test_a_stopped_name_can_be_deployed_again(stack, client, tiny_gguf, name):
    assert (await deploy(client, name, tiny_gguf)).status is S.DEPLOYED
    await stop(client, name)
    again = await deploy(client, name, tiny_gguf)
    assert again.status is S.DEPLOYED
    assert stack.chat(name).status_code == 200
    await stop(client, name)


async def test_missing_model_path_fails_naming_the_path(stack, client, tmp_path, name):
    missing = tmp_path / "no-such-model.gguf"
    state = await deploy(client, name, missing)
    assert state.status is S.FAILED
    assert state.error.code is ErrorCode.MODEL_LOADING_FAILURE
    assert str(missing) in state.error.message
    assert state.error.guidance
    assert not engine_processes(stack.home, name)
    assert name not in routed(stack.settings.routes_dir)
    await stop(client, name)


async def test_garbage_gguf_fails_with_the_engines_own_log_line(stack, client, garbage_gguf, name):
    state = await deploy(client, name, garbage_gguf)
    assert state.status is S.FAILED
    assert state.error.code is ErrorCode.MODEL_LOADING_FAILURE
    evidence = "\n".join(state.error.log_lines).lower()
    assert "magic" in evidence or "failed to load model" in evidence or "error loading model" in evidence, state.error
    assert not engine_processes(stack.home, name)
    await stop(client, name)


async def test_killed_engine_comes_back_then_fails_when_the_budget_is_spent(stack, client, tiny_gguf, name):
    state = await deploy(client, name, tiny_gguf, restart=QUICK_RESTARTS)
    assert state.status is S.DEPLOYED
    for attempt in (1, 2):
        os.kill(state.pid, signal.SIGKILL)
        # the first restart is immediate: ERROR may last less than a poll, so the transitions say it
        seen = await until_restarted_or_down(client, name, state.pid)
        if seen.status is S.ERROR:
            assert seen.error.code is ErrorCode.CONTAINER_EXITED and "signal 9" in seen.error.message
        errors = [t for t in seen.transitions if t.status is S.ERROR]
        assert len(errors) == attempt and errors[-1].detail.startswith("CONTAINER_EXITED: automatic restart")
        assert seen.attempts == attempt
        back = await wait_for_status(client, name, S.DEPLOYED, timeout_s=20)
        assert back.pid != state.pid
        assert len(engine_processes(stack.home, name)) == 1
        state = back
    assert stack.chat(name).status_code == 200

    os.kill(state.pid, signal.SIGKILL)  # one more than the budget
    failed = await wait_for_status(client, name, S.FAILED, timeout_s=10)
    assert failed.error.code is ErrorCode.CONTAINER_EXITED
    assert not engine_processes(stack.home, name)
    assert name not in routed(stack.settings.routes_dir)

    await client.get_workflow_handle(workflow_id(name)).signal("retry")
    revived = await wait_for_status(client, name, S.DEPLOYED, timeout_s=20)
    assert revived.attempts == 0 and revived.error is None
    assert stack.chat(name).status_code == 200
    await stop(client, name)


async def test_engine_not_ready_in_time_is_a_startup_timeout(stack, client, tiny_gguf, name):
    # 50 ms is less than the engine process needs just to start: it can never be ready in time
    state = await deploy(client, name, tiny_gguf, startup_timeout_s=0.05)
    assert state.status is S.FAILED
    assert state.error.code is ErrorCode.STARTUP_TIMEOUT
    assert "0.05 s" in state.error.message
    statuses = [t.status for t in state.transitions]
    assert statuses.count(S.ERROR) == 1, "STARTUP_TIMEOUT is retried once with the same spec"
    assert not engine_processes(stack.home, name)
    await stop(client, name)


async def test_retry_with_a_patch_redeploys_and_a_bad_patch_changes_nothing(stack, client, tiny_gguf, name):
    state = await deploy(client, name, tiny_gguf)
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal("retry", {"context_size": -5})
    await asyncio.sleep(0.5)
    unchanged = await deployment_state(client, name)
    assert unchanged.status is S.DEPLOYED and unchanged.pid == state.pid
    assert "context_size" in unchanged.rejected_patch

    await handle.signal("retry", {"context_size": 256})
    redeployed = await eventually_state(client, name, lambda s: s.status is S.DEPLOYED and s.pid != state.pid)
    assert redeployed.spec.context_size == 256 and redeployed.rejected_patch is None
    engine = engine_processes(stack.home, name)
    assert len(engine) == 1 and "256" in engine[0].cmdline()
    await stop(client, name)


async def eventually_state(client, name, predicate, timeout_s: float = 20) -> DeploymentState:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        state = await deployment_state(client, name)
        if predicate(state):
            return state
        assert asyncio.get_running_loop().time() < deadline, state.model_dump_json(indent=1)
        await asyncio.sleep(0.05)


async def test_temporal_cancel_is_a_stop(stack, client, tiny_gguf, name):
    state = await deploy(client, name, tiny_gguf)
    temporal = Path(sys.executable).parent / "temporal"
    subprocess.run(
        [str(temporal), "workflow", "cancel", "--address", stack.settings.temporal_address,
         "--workflow-id", workflow_id(name)],
        check=True, capture_output=True,
    )
    handle = client.get_workflow_handle(workflow_id(name))
    description = None
    for _ in range(200):
        description = await handle.describe()
        if description.status is not WorkflowExecutionStatus.RUNNING:
            break
        await asyncio.sleep(0.05)
    assert description.status is WorkflowExecutionStatus.CANCELED
    final = await deployment_state(client, name)
    assert final.status is S.STOPPED
    assert not engine_processes(stack.home, name)
    assert port_is_free(state.port)
    assert name not in routed(stack.settings.routes_dir)


async def test_worker_killed_mid_deployment_ends_with_one_engine(stack, client, tiny_gguf, name):
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf)))
    seen = await wait_for_status(client, name, {S.DEPLOYING, S.INITIALIZING, S.DEPLOYED}, poll_s=0.005)
    worker = stack.worker_pid()
    os.kill(worker, signal.SIGKILL)
    state = await wait_for_status(client, name, S.DEPLOYED, timeout_s=60)
    new_worker = await eventually(stack.worker_pid, timeout_s=10)
    assert new_worker and new_worker != worker, "berth up did not restart the worker"
    engines = engine_processes(stack.home, name)
    assert [engine.pid for engine in engines] == [state.pid], (seen.status, engines)
    assert stack.chat(name).status_code == 200
    await stop(client, name)
