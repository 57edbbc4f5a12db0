"""The REST API over HTTP, against the real stack that `berth up` runs (the API is one of its processes)."""

import os
import stat
import time
from datetime import datetime, timezone

import httpx
import pytest
from fastapi.testclient import TestClient
from temporalio.service import RPCError, RPCStatusCode

from berth.api.app import create_app
from berth.api.facade import Deployments
from berth.common.api_token import ensure_api_token, load_api_token
from berth.domain.temporal_names import workflow_id
from berth.settings import Settings
from berth.testing.harness import engine_processes, wait_for_api_status
from berth.node.routes import routed

FINAL = {"DEPLOYED", "STOPPED", "FAILED", "MUST_REDOWNLOAD"}




def eventually(check, timeout_s: float = 10, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(poll_s)


def listed(api: httpx.Client, status: str | None = None) -> dict[str, dict]:
    """Every row of the list, page after page."""
    params = {"status": status} if status else {}
    rows: dict[str, dict] = {}
    while True:
        response = api.get("/v1/deployments", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        rows.update((row["name"], row) for row in page["deployments"])
        if not page["next_page_token"]:
            return rows
        params["page_token"] = page["next_page_token"]


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in response.text
    return message


async def assert_nothing_created(stack, client, name: str, routes_before: set[str]) -> None:
    """No workflow of that id, no new route, no engine process."""
    with pytest.raises(RPCError) as missing:
        await client.get_workflow_handle(workflow_id(name)).describe()
    assert missing.value.status is RPCStatusCode.NOT_FOUND
    assert routed(stack.settings.routes_dir) <= routes_before
    assert not engine_processes(stack.home, name)


# ---- the lifecycle ---------------------------------------------------------------------------------


async def test_whole_lifecycle_over_http(stack, api, tiny_gguf, name):
    spec = {"name": name, "model": str(tiny_gguf)}
    accepted = api.post("/v1/deployments", json=spec)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["name"] == name and accepted.json()["status"] in {"REQUESTED", "DEPLOYING"}
    assert accepted.json()["spec"]["model"] == str(tiny_gguf)

    assert_error(api.post("/v1/deployments", json=spec), 409, "conflict", name, "already exists")

    state = wait_for_api_status(api, name, FINAL)
    assert state["status"] == "DEPLOYED", state["error"]
    assert state["engine"] == "llamacpp" and state["endpoint"].endswith(f"/models/{name}/v1")
    assert stack.chat(name).status_code == 200
    assert len(engine_processes(stack.home, name)) == 1, "the refused second deploy started an engine"

    # visibility (search attributes) trails the workflow by about a second
    row = eventually(lambda: listed(api, "DEPLOYED").get(name))
    started_at = row.pop("started_at")  # when the workflow run started (the console's age column)
    assert row == {"name": name, "status": "DEPLOYED", "engine": "llamacpp", "model": str(tiny_gguf), "replicas": "1/1"}
    assert datetime.fromisoformat(started_at.replace("Z", "+00:00")) <= datetime.now(timezone.utc)
    assert name in listed(api)
    assert name not in listed(api, "STOPPED")

    logs = api.get(f"/v1/deployments/{name}/logs", params={"tail": 3}).json()
    assert logs["path"] == state["instances"][0]["log_path"]
    assert 1 <= len(logs["lines"]) <= 3 and logs["issues"] == [] and logs["offset"] > 0
    newer = api.get(f"/v1/deployments/{name}/logs", params={"offset": logs["offset"]}).json()
    assert newer["lines"] == [] and newer["offset"] == logs["offset"]

    stopping = api.post(f"/v1/deployments/{name}/stop")
    assert stopping.status_code == 202, stopping.text
    stopped = wait_for_api_status(api, name, {"STOPPED"})
    assert stopped["endpoint"] is None and stopped["pid"] is None
    assert not engine_processes(stack.home, name)
    assert name not in routed(stack.settings.routes_dir)
    assert api.post(f"/v1/deployments/{name}/stop").status_code == 202  # stopping again is fine
    assert_error(api.post(f"/v1/deployments/{name}/retry"), 409, "conflict", "stopped", "deploy it again")
    assert eventually(lambda: listed(api, "STOPPED").get(name, {}).get("status") == "STOPPED")
    assert name not in listed(api, "DEPLOYED")

    # a STOPPED name may be deployed again: the old run no longer speaks for the name
    again = api.post("/v1/deployments", json=spec)
    assert again.status_code == 202, again.text
    assert wait_for_api_status(api, name, FINAL)["status"] == "DEPLOYED"
    assert eventually(lambda: name in listed(api, "DEPLOYED"))
    assert name not in listed(api, "STOPPED")
    assert listed(api)[name]["status"] == "DEPLOYED"
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})


async def test_failed_deployment_shows_its_reason_and_log_issues(stack, api, garbage_gguf, name):
    assert api.post("/v1/deployments", json={"name": name, "model": str(garbage_gguf)}).status_code == 202
    state = wait_for_api_status(api, name, FINAL)
    assert state["status"] == "FAILED"
    assert state["error"]["code"] == "MODEL_LOADING_FAILURE" and state["error"]["guidance"]

    logs = api.get(f"/v1/deployments/{name}/logs").json()
    codes = {issue["code"] for issue in logs["issues"]}
    assert "MODEL_LOADING_FAILURE" in codes, logs
    for issue in logs["issues"]:
        assert logs["lines"][issue["line"]] == issue["text"]
    assert eventually(lambda: name in listed(api, "FAILED"))
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})


async def test_retry_checks_the_patch_before_signalling(stack, api, tiny_gguf, name):
    api.post("/v1/deployments", json={"name": name, "model": str(tiny_gguf)})
    before = wait_for_api_status(api, name, FINAL)
    assert before["status"] == "DEPLOYED"

    for patch, field in (
        ({"context_size": -5}, "context_size"),
        ({"context_size": 10**9}, "context_size"),
        ({"engine": "tensorrt"}, "engine"),
        ({"name": "other"}, "name"),  # a retry cannot rename
        ({"gpus": 2}, "gpus"),
    ):
        assert_error(api.post(f"/v1/deployments/{name}/retry", json=patch), 400, "invalid_request", field)
    time.sleep(0.3)  # what a signal would have changed by now
    after = api.get(f"/v1/deployments/{name}").json()
    assert after["rejected_patch"] is None, "a bad patch reached the workflow"
    assert after["pid"] == before["pid"] and after["transitions"] == before["transitions"]

    retried = api.post(f"/v1/deployments/{name}/retry", json={"context_size": 256})
    assert retried.status_code == 202, retried.text
    redeployed = eventually(
        lambda: (s := api.get(f"/v1/deployments/{name}").json())["status"] == "DEPLOYED"
        and s["pid"] != before["pid"] and s,
        timeout_s=20,
    )
    assert redeployed and redeployed["spec"]["context_size"] == 256
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})


# ---- bad input: a 4xx that says what to change, and nothing created ---------------------------------

BAD_SPECS = [
    pytest.param({"name": "Upper-Case"}, "name", id="uppercase"),
    pytest.param({"name": "dots.in.name"}, "name", id="dot"),
    pytest.param({"name": "a/b"}, "name", id="slash"),
    pytest.param({"name": "tick`s"}, "name", id="backtick"),
    pytest.param({"name": "x" * 64}, "name", id="too-long"),
    pytest.param({"name": "-dash"}, "name", id="leading-dash"),
    pytest.param({"engine": "tensorrt"}, "engine", id="unknown-engine"),
    pytest.param({"context_size": -1}, "context_size", id="negative-context"),
    pytest.param({"context_size": 0}, "context_size", id="zero-context"),
    pytest.param({"context_size": 10**10}, "context_size", id="absurd-context"),
    pytest.param({"gpu_count": 1}, "gpu_count", id="unknown-field"),
    pytest.param({"model": None}, "model", id="no-model"),
    pytest.param({"startup_timeout_s": -3}, "startup_timeout_s", id="negative-timeout"),
    pytest.param({"model": "https://host.example/"}, "model", id="url-without-file"),
    pytest.param({"model": "hf:org/repo@"}, "model", id="hub-empty-revision"),
    pytest.param({"model": "https://h.example/m.gguf#sha256=123"}, "model", id="bad-sha256"),
]


@pytest.mark.parametrize("change, field", BAD_SPECS)
async def test_bad_spec_is_a_400_naming_the_field_and_creates_nothing(stack, api, client, tiny_gguf, name, change, field):
    routes_before = routed(stack.settings.routes_dir)
    spec = {"name": name, "model": str(tiny_gguf), **change}
    spec = {key: value for key, value in spec.items() if value is not None}
    message = assert_error(api.post("/v1/deployments", json=spec), 400, "invalid_request", field)
    if field == "name":
        assert "DNS label" in message
    if field == "engine":
        assert "llamacpp" in message  # says what to choose instead
    await assert_nothing_created(stack, client, spec["name"], routes_before)


UNSAFE_SPECS = [
    pytest.param({"env": {"LD_PRELOAD": "/tmp/evil.so"}}, ["LD_PRELOAD", "BERTH_ALLOW_UNSAFE_ENV"], id="ld-preload"),
    pytest.param({"env": {"PYTHONPATH": "/tmp"}}, ["PYTHONPATH"], id="pythonpath"),
    pytest.param({"env": {"A": "x\u0000y"}}, ["NUL"], id="nul-value"),
    pytest.param({"engine_args": ["--host", "0.0.0.0"]}, ["--host", "berth sets it"], id="host"),
    pytest.param({"engine": "llamacpp", "engine_args": ["--port", "1"]}, ["--port"], id="port"),
    pytest.param({"engine": "llamacpp", "engine_args": ["-c", "99"]}, ["-c", "context_size"], id="ctx"),
    pytest.param({"engine": "llamacpp", "engine_args": ["--lora", "/x"]}, ["--lora"], id="lora"),
    pytest.param({"engine": "vllm", "engine_args": ["--trust-remote-code"]},
                 ["--trust-remote-code", "BERTH_ALLOW_UNSAFE_ENGINE_ARGS"], id="remote-code"),
    pytest.param({"engine": "llamacpp", "engine_args": ["--frobnicate"]}, ["--frobnicate", "--parallel"], id="unknown"),
    pytest.param({"engine": "llamacpp", "engine_args": ["--parallel", "two"]}, ["--parallel", "'two'"], id="value"),
]


@pytest.mark.parametrize("change, words", UNSAFE_SPECS)
async def test_a_spec_that_could_run_code_on_the_node_is_a_400_naming_it(stack, api, client, tiny_gguf, name, change, words):
    routes_before = routed(stack.settings.routes_dir)
    spec = {"name": name, "model": str(tiny_gguf), **change}
    assert_error(api.post("/v1/deployments", json=spec), 400, "invalid_request", *words)
    await assert_nothing_created(stack, client, name, routes_before)


async def test_a_retry_patch_that_could_run_code_is_a_400_before_signalling(stack, api, tiny_gguf, name):
    api.post("/v1/deployments", json={"name": name, "model": str(tiny_gguf)})
    before = wait_for_api_status(api, name, FINAL)
    assert before["status"] == "DEPLOYED", before["error"]
    for patch, word in (
        ({"env": {"LD_PRELOAD": "/tmp/evil.so"}}, "LD_PRELOAD"),
        ({"engine_args": ["--host", "0.0.0.0"]}, "--host"),
    ):
        assert_error(api.post(f"/v1/deployments/{name}/retry", json=patch), 400, "invalid_request", word)
    after = api.get(f"/v1/deployments/{name}").json()
    assert after["rejected_patch"] is None and after["pid"] == before["pid"]
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"})


async def test_malformed_bodies_are_refused(stack, api, client, name):
    routes_before = routed(stack.settings.routes_dir)
    json_headers = {"Content-Type": "application/json"}
    assert_error(
        api.post("/v1/deployments", content=b'{"name": "' + name.encode() + b'", model: x}', headers=json_headers),
        400, "malformed_json", "not valid JSON",
    )
    assert_error(api.post("/v1/deployments", content=b"[1, 2]", headers=json_headers), 400, "invalid_request", "JSON object")
    assert_error(api.post("/v1/deployments", content=b"", headers=json_headers), 400, "invalid_request", "JSON object")

    padding = "x" * (1024 * 1024)
    big = {"name": name, "model": "/m.gguf", "env": {"PAD": padding}}
    assert_error(api.post("/v1/deployments", json=big), 413, "body_too_large", "1 MiB")

    def chunks():  # no Content-Length: the limit holds for a streamed body too
        body = httpx.Request("POST", "/", json=big).content
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    assert_error(api.post("/v1/deployments", content=chunks(), headers=json_headers), 413, "body_too_large")
    await assert_nothing_created(stack, client, name, routes_before)


async def test_unknown_names_are_404(api):
    for method, path in (
        ("GET", "/v1/deployments/no-such-thing"),
        ("POST", "/v1/deployments/no-such-thing/stop"),
        ("POST", "/v1/deployments/no-such-thing/retry"),
        ("GET", "/v1/deployments/no-such-thing/logs"),
        ("GET", "/v1/deployments/Not_A_Name"),
    ):
        assert_error(api.request(method, path), 404, "not_found", "no deployment named")


async def test_bad_query_parameters_unknown_routes_and_methods(api):
    assert_error(api.get("/v1/deployments", params={"status": "RUNNING"}), 400, "invalid_request", "status", "DEPLOYED")
    assert_error(api.get("/v1/deployments/x/logs", params={"tail": 0}), 400, "invalid_request", "tail")
    assert_error(api.get("/v1/deployments/x/logs", params={"tail": "many"}), 400, "invalid_request", "tail")
    assert_error(api.get("/v2/nothing"), 404, "not_found", "/docs")
    assert_error(api.delete("/v1/deployments"), 405, "method_not_allowed")
    assert_error(api.get("/v1/deployments", params={"page_size": 0}), 400, "invalid_request", "page_size")
    assert_error(api.get("/v1/deployments", params={"page_size": 100_000}), 400, "invalid_request", "page_size")
    assert_error(api.get("/v1/deployments", params={"page_token": "not-a-token"}), 400, "invalid_request", "page_token")


async def test_the_list_comes_a_page_at_a_time(stack, api, garbage_gguf, name):
    names = [f"{name}-{i}" for i in range(3)]
    for each in names:  # FAILED quickly, and listed while their workflows wait for a retry
        assert api.post("/v1/deployments", json={"name": each, "model": str(garbage_gguf)}).status_code == 202
    assert eventually(lambda: set(names) <= set(listed(api, "FAILED")), timeout_s=30)

    seen, pages, token = [], 0, None
    while True:
        params = {"status": "FAILED", "page_size": 1} | ({"page_token": token} if token else {})
        page = api.get("/v1/deployments", params=params).json()
        assert len(page["deployments"]) <= 1 and set(page) == {"deployments", "next_page_token"}
        seen += [row["name"] for row in page["deployments"]]
        pages += 1
        if not (token := page["next_page_token"]):
            break
    assert set(names) <= set(seen) and len(seen) == len(set(seen)) and pages >= 3
    assert seen == list(listed(api, "FAILED")), "pages of 1 follow the order of one big page"
    for each in names:
        api.post(f"/v1/deployments/{each}/stop")


# ---- auth ------------------------------------------------------------------------------------------


async def test_every_route_but_healthz_needs_the_token(stack, api):
    with httpx.Client(base_url=stack.api_url, timeout=10) as anonymous, stack.api(token="not-it") as wrong:
        for method, path in (
            ("GET", "/v1/deployments"),
            ("POST", "/v1/deployments"),
            ("GET", "/v1/deployments/x"),
            ("POST", "/v1/deployments/x/stop"),
            ("POST", "/v1/deployments/x/retry"),
            ("GET", "/v1/deployments/x/logs"),
            ("GET", "/v1/auth/check"),
        ):
            refused = anonymous.request(method, path)
            assert_error(refused, 401, "unauthorized", "Authorization: Bearer")
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert_error(wrong.request(method, path), 401, "unauthorized", "wrong bearer token")
        basic = anonymous.get("/v1/deployments", headers={"Authorization": f"Basic {stack.api_token()}"})
        assert_error(basic, 401, "unauthorized")

        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert api.get("/v1/auth/check").status_code == 200
        refused = api.post("/v1/auth/check")  # the gateway's forwardAuth asks with GET only
        assert refused.status_code == 405 and refused.headers["allow"] == "GET"
        assert anonymous.get("/docs").status_code == 200
        schema = anonymous.get("/openapi.json").json()
        assert "/v1/deployments" in schema["paths"] and "HTTPBearer" in schema["components"]["securitySchemes"]


def test_the_token_file_is_private_and_stable(stack, tmp_path):
    token_file = stack.home / "api-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stack.api_token() == token_file.read_text().strip()

    settings = Settings.from_env({"BERTH_HOME": str(tmp_path / "home")})
    made = ensure_api_token(settings, env={})
    assert len(made) >= 32 and ensure_api_token(settings, env={}) == made
    assert stat.S_IMODE((tmp_path / "home" / "api-token").stat().st_mode) == 0o600
    assert load_api_token(settings, env={"BERTH_API_TOKEN": "from-env"}) == "from-env"
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["api-token"]  # nothing left aside


# ---- no traceback reaches a client ----------------------------------------------------------------


class BrokenDeployments(Deployments):
    async def get(self, name):
        raise ValueError("secret internals /etc/shadow")


def test_an_unexpected_error_is_a_generic_500(tmp_path):
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path)})
    app = create_app(settings, facade=BrokenDeployments(settings), token="t")
    with TestClient(app, raise_server_exceptions=False) as http:
        response = http.get("/v1/deployments/x", headers={"Authorization": "Bearer t"})
    message = assert_error(response, 500, "internal", "api.log")
    assert "secret" not in response.text and "ValueError" not in response.text, message
    assert not os.listdir(tmp_path)  # the token was given: no token file written
