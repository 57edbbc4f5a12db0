"""Secrets stay secret, and Temporal is the control plane's door: against a real `berth up`.

- An HF_TOKEN deployed (and changed by a retry) through the API reaches the engine's environment,
  and is in no API answer, in no file under the stack's home (logs, records, Temporal's database)
  and not in clear in `temporal workflow show` of its workflow.
- A spec started straight from the Temporal CLI with what the API refuses is refused by the
  workflow itself (FAILED, the variable named) before any step runs on the node.
- A sealed value the node cannot open is FAILED, naming the variable; no engine starts.
"""

import base64
import json
import secrets
import subprocess
import time
from pathlib import Path

from berth.common.sealing import SEALED_PREFIX, SealingKey
from berth.domain.errors import ErrorCode
from berth.domain.pipeline import ALLOCATE_PORT, LAUNCH_ENGINE, PREPARE_FILES
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus
from berth.domain.temporal_names import STOP_SIGNAL, WORKFLOW_TYPE, workflow_id
from berth.settings import CONTROL_TASK_QUEUE
from berth.testing.harness import engine_processes, start_deployment, wait_for_api_status, wait_for_status
from berth.worker.temporal_server import temporal_binary


def temporal(stack, *args: str) -> str:
    done = subprocess.run(
        [temporal_binary(), *args, "--address", stack.settings.temporal_address],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def history(stack, name: str) -> str:
    return temporal(stack, "workflow", "show", "--workflow-id", workflow_id(name), "--output", "json")


def readable(history_json: str) -> str:
    """The history as the Temporal UI shows it: the CLI's JSON, with every payload's data (base64
    there) decoded, so that a value in clear anywhere in it is found by a plain `in`."""
    decoded = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "data" in node and "metadata" in node and isinstance(node["data"], str):
                decoded.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history_json))
    return history_json + "\n".join(decoded)


def scheduled_activities(history_json: str) -> set[str]:
    events = json.loads(history_json)["events"]
    return {
        event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for event in events
        if "activityTaskScheduledEventAttributes" in event
    }


def environ_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def files_holding(home: Path, secret: bytes) -> list[str]:
    holding = []
    for path in home.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
                holding.append(str(path))
        except OSError:
            continue  # a socket, or a file gone meanwhile
    return holding


def wait_for_new_engine(api, name: str, old_pid: int, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = api.get(f"/v1/deployments/{name}").json()
        pid = (state["instances"] or [{}])[0].get("pid")
        if state["status"] in ("DEPLOYED", "FAILED") and pid and pid != old_pid:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


async def test_an_env_value_reaches_the_engine_and_nothing_else(stack, api, tiny_gguf, name):
    first, second = (f"hf_{secrets.token_hex(20)}" for _ in range(2))
    spec = {"name": name, "model": str(tiny_gguf), "context_size": 256,
            "env": {"HF_TOKEN": first, "OMP_NUM_THREADS": "1"}}
    answers = [api.post("/v1/deployments", json=spec)]
    assert answers[0].status_code == 202, answers[0].text
    assert answers[0].json()["spec"]["env"] == {"HF_TOKEN": "***", "OMP_NUM_THREADS": "***"}
    state = wait_for_api_status(api, name, {"DEPLOYED", "FAILED"}, timeout_s=60)
    assert state["status"] == "DEPLOYED", state["error"]
    assert f"HF_TOKEN={first}".encode() in environ_of(state["instances"][0]["pid"])

    # a retry's patch is sealed too, and the engine gets the new value
    answers.append(api.post(f"/v1/deployments/{name}/retry", json={"env": {"HF_TOKEN": second}}))
    assert answers[-1].status_code == 202, answers[-1].text
    state = wait_for_new_engine(api, name, state["instances"][0]["pid"])
    assert state["status"] == "DEPLOYED", state["error"]
    assert f"HF_TOKEN={second}".encode() in environ_of(state["instances"][0]["pid"])
    # the mask sent back is refused, not taken as the value
    refused = api.post(f"/v1/deployments/{name}/retry", json={"env": {"HF_TOKEN": "***"}})
    assert refused.status_code == 400 and "HF_TOKEN" in refused.json()["error"]["message"], refused.text

    answers += [api.get(f"/v1/deployments/{name}"), api.get("/v1/deployments"),
                api.get(f"/v1/deployments/{name}/logs", params={"tail": 1000})]
    assert answers[-3].json()["spec"]["env"] == {"HF_TOKEN": "***"}
    shown = readable(history(stack, name))
    assert "HF_TOKEN" in shown and SEALED_PREFIX in shown  # there, by name, sealed
    for secret in (first, second):
        assert not [answer.request.url for answer in answers if secret in answer.text]
        assert secret not in shown, "an env value is in clear in Temporal's history"
        assert not files_holding(stack.home, secret.encode())
        assert secret not in "".join(stack.output)  # berth up's console: the worker's and API's logs
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})


async def test_the_workflow_refuses_a_spec_started_from_the_temporal_cli(stack, api, tiny_gguf, name):
    spec = {"name": name, "model": str(tiny_gguf), "env": {"LD_PRELOAD": "/tmp/x.so"}}
    temporal(stack, "workflow", "start", "--type", WORKFLOW_TYPE, "--task-queue", CONTROL_TASK_QUEUE,
             "--workflow-id", workflow_id(name), "--input", json.dumps({"spec": spec}))
    state = wait_for_api_status(api, name, {"FAILED", "DEPLOYED"}, timeout_s=60)
    assert state["status"] == "FAILED", state
    assert state["error"]["code"] == "ENGINE_UNAVAILABLE"
    assert "LD_PRELOAD" in state["error"]["message"] and "berth refuses this spec" in state["error"]["message"]
    # given in clear through the Temporal CLI, it is in the history in clear (the docs say so): the
    # check that the API's values are not is able to find one
    assert "/tmp/x.so" in readable(history(stack, name))
    # nothing ran on the node: no files step, no port, no launch, no engine
    assert not scheduled_activities(history(stack, name)) & {PREPARE_FILES, ALLOCATE_PORT, LAUNCH_ENGINE}
    assert not engine_processes(stack.home, name)
    assert state["instances"][0]["pid"] is None and state["endpoint"] is None

    # a retry signalled straight through Temporal is judged again
    temporal(stack, "workflow", "signal", "--workflow-id", workflow_id(name), "--name", "retry",
             "--input", json.dumps({"env": {"PYTHONPATH": "/tmp"}}))
    deadline = time.monotonic() + 30
    while "PYTHONPATH" not in ((state.get("error") or {}).get("message") or ""):
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
        state = api.get(f"/v1/deployments/{name}").json()
    assert not scheduled_activities(history(stack, name)) & {PREPARE_FILES, ALLOCATE_PORT, LAUNCH_ENGINE}
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})


async def test_a_sealed_value_the_node_cannot_open_fails_the_deployment(stack, client, tiny_gguf, name):
    """Sealed under another key (another API's, or a key changed since): FAILED at launch, naming
    the variable and the key this node needs; no engine starts, not even without the variable."""
    sealed = SealingKey("another-api-s-key-" + "z" * 30).seal(name, "HF_TOKEN", "hf_never_opened")
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), env={"HF_TOKEN": sealed}))
    state = await wait_for_status(client, name, {DeploymentStatus.FAILED, DeploymentStatus.DEPLOYED}, timeout_s=60)
    assert state.status is DeploymentStatus.FAILED and state.error.code is ErrorCode.ENGINE_UNAVAILABLE
    assert "HF_TOKEN" in state.error.message and "another secret key" in state.error.message
    assert "BERTH_SECRET_KEY" in state.error.message
    assert not engine_processes(stack.home, name)
    await client.get_workflow_handle(workflow_id(name)).signal(STOP_SIGNAL)
