"""Model roots and private logs against the real stack (`berth up`, the session's; its node's one
model root is pytest's temporary folder, tests/conftest.py): a path outside the roots is a 400 at
the API, which runs beside the node, and MODEL_LOADING_FAILURE on the node for a workflow started
straight through Temporal; an engine's log is 0600 in a 0700 folder and holds no `env` value."""

import os
import stat
from pathlib import Path

import pytest

from berth.api.facade.model_paths import refuse_outside_roots
from berth.api.facade.errors import BadRequest
from berth.domain.errors import ErrorCode
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import STOP_SIGNAL, workflow_id
from berth.node.routes import routed
from berth.settings import API_NODE_ENV, Settings
from berth.testing.harness import engine_processes, start_deployment, wait_for_api_status, wait_for_status
from tests.test_api import FINAL, assert_error, assert_nothing_created

OUTSIDE = "outside the folders this node reads models from"


@pytest.fixture
def escaping_link(tmp_path):
    link = tmp_path / "escape.gguf"  # under the root, pointing outside it
    link.symlink_to("/etc/passwd")
    return link


@pytest.mark.parametrize("model", ["/", "/etc/passwd", "link"])
async def test_a_model_outside_the_roots_is_a_400_naming_path_roots_and_variable(
    stack, api, client, name, model, escaping_link, model_roots
):
    model = str(escaping_link) if model == "link" else model
    routes_before = routed(stack.settings.routes_dir)
    message = assert_error(
        api.post("/v1/deployments", json={"name": name, "model": model}), 400, "invalid_request",
        repr(model), OUTSIDE, model_roots, str(stack.settings.models_dir), "BERTH_MODEL_ROOTS",
    )
    if model == str(escaping_link):
        assert "resolves to '/etc/passwd'" in message
    await assert_nothing_created(stack, client, name, routes_before)


async def test_a_retry_patch_outside_the_roots_is_a_400_before_signalling(stack, api, garbage_gguf, name):
    api.post("/v1/deployments", json={"name": name, "model": str(garbage_gguf)})
    before = wait_for_api_status(api, name, FINAL)
    assert before["status"] == "FAILED", before
    assert_error(api.post(f"/v1/deployments/{name}/retry", json={"model": "/"}), 400, "invalid_request", OUTSIDE)
    assert api.get(f"/v1/deployments/{name}").json()["spec"]["model"] == str(garbage_gguf)
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})


def test_the_engines_report_does_not_look_outside_the_roots(api):
    report = api.get("/v1/engines", params={"model": "/etc/passwd"}).json()
    assert report["model"]["found"] is False and report["model"]["format"] is None
    assert OUTSIDE in report["selection"]["refused"]


async def test_the_node_refuses_a_path_outside_its_roots_started_through_temporal(stack, client, name, escaping_link):
    """The API is not the only door: a workflow started from a Temporal client gets the node's own check."""
    for model in ("/etc/passwd", str(escaping_link)):
        await start_deployment(client, DeploymentSpec(name=name, model=model, restart={"max_attempts": 0}))
        state = await wait_for_status(client, name, {S.FAILED, S.DEPLOYED, S.ERROR}, timeout_s=30)
        assert state.status is S.FAILED, state
        assert state.error.code is ErrorCode.MODEL_LOADING_FAILURE
        assert OUTSIDE in state.error.message and "BERTH_MODEL_ROOTS" in state.error.message
        assert not engine_processes(stack.home, name), "nothing launched"
        await client.get_workflow_handle(workflow_id(name)).signal(STOP_SIGNAL)
        name = name + "-b"


def test_the_api_leaves_another_node_to_that_node(tmp_path):
    """Where the API cannot know a node's roots (another node; no node beside it), it does not guess."""
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_MODEL_ROOTS": str(tmp_path)})
    beside = {API_NODE_ENV: "node-a"}
    with pytest.raises(BadRequest, match="BERTH_MODEL_ROOTS"):
        refuse_outside_roots(DeploymentSpec(name="x", model="/"), settings, beside)
    with pytest.raises(BadRequest):
        refuse_outside_roots(DeploymentSpec(name="x", model="/", node="node-a"), settings, beside)
    refuse_outside_roots(DeploymentSpec(name="x", model="/", node="node-b"), settings, beside)
    refuse_outside_roots(DeploymentSpec(name="x", model="/"), settings, {})
    for model in ("hf:org/repo", "https://h.example/m.gguf", "org/repo", "gemma3-270m", "gemma9-1b"):
        refuse_outside_roots(DeploymentSpec(name="x", model=model), settings, beside)


async def test_engine_logs_are_private_and_hold_no_env_value(stack, api, tiny_gguf, name):
    secret = "s3cr3t-value-that-must-stay-out-of-logs"
    accepted = api.post("/v1/deployments", json={"name": name, "model": str(tiny_gguf), "env": {"MY_TOKEN": secret}})
    assert accepted.status_code == 202, accepted.text
    state = wait_for_api_status(api, name, FINAL)
    assert state["status"] == "DEPLOYED", state["error"]
    log = Path(state["instances"][0]["log_path"])  # one log per instance
    assert log.parent == stack.settings.logs_dir
    assert "=== berth: starting" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})
    for path in stack.home.rglob("*.log"):  # the engines', the worker's, the API's, Temporal's, Traefik's
        assert secret.encode() not in path.read_bytes(), f"{path} holds an env value"
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, f"{path} is readable by others"
