"""Which credential opens what, against a real stack (Traefik, the API, engines): the attack matrix
of issue 24 for credentials. An inference key opens the model endpoints of its deployments through
the gateway and nothing of the API; a revoked key stops at once; the admin token keeps its fast
router; a worker without a token (a node that joined a cluster) publishes routes whose every call the
API checks (forwardAuth), never one without auth."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import workflow_id
from berth.node.route_table import RouteTable
from berth.testing.harness import RunningStack, start_deployment, wait_for_status

REVOKED_WITHIN_S = 1.0


async def _deploy(client, name, model, public=False):
    await start_deployment(client, DeploymentSpec(name=name, model=str(model), public=public))


async def _stop(client, *names):
    for name in names:
        await client.get_workflow_handle(workflow_id(name)).signal("stop")
    for name in names:
        await client.get_workflow_handle(workflow_id(name)).result()


def _cli(stack, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "berth.api.cli", *args], env=stack.env, capture_output=True,
                          text=True, timeout=60)


def _raw_get(stack, path: str, key: str) -> int:
    """A GET whose path goes to the gateway byte for byte (no client-side normalisation); its status."""
    with socket.create_connection(("127.0.0.1", stack.settings.gateway_port), timeout=10) as raw:
        raw.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                    "Connection: close\r\n\r\n".encode())
        head = raw.recv(4096).split(b"\r\n", 1)[0]
    return int(head.split()[1])


def _error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]["message"]
    for word in words:
        assert word in message, (word, message)
    return message


async def test_an_inference_key_opens_its_deployments_models_and_nothing_else(stack, client, api, tiny_gguf, name):
    a, b = f"{name}-a", f"{name}-b"
    await asyncio.gather(_deploy(client, a, tiny_gguf), _deploy(client, b, tiny_gguf))
    try:
        await asyncio.gather(wait_for_status(client, a, S.DEPLOYED), wait_for_status(client, b, S.DEPLOYED))

        made = _cli(stack, "keys", "create", "--deployments", a, "--name", "chat-app")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("bik_") and "shown" in made.stderr and a in made.stderr
        listed = _cli(stack, "keys", "ls")
        assert listed.returncode == 0 and "chat-app" in listed.stdout and a in listed.stdout
        assert key not in listed.stdout and key[-4:] in listed.stdout
        assert key not in api.get("/v1/keys").text

        # the key on the API's routes: 403, saying it is an inference key
        with stack.api(token=key) as keyed:
            for method, path in (("GET", "/v1/deployments"), ("POST", f"/v1/deployments/{a}/stop"),
                                 ("GET", f"/v1/deployments/{a}/logs"), ("GET", "/v1/keys"), ("POST", "/v1/keys")):
                _error(keyed.request(method, path), 403, "inference key", "admin token")
        assert (await wait_for_status(client, a, S.DEPLOYED, timeout_s=1)).status is S.DEPLOYED, "nothing stopped"

        # the gateway: a's endpoints open, b's not
        chat = stack.chat(a, token=key)
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["role"] == "assistant"
        _error(stack.chat(b, token=key), 403, f"does not open {b}", a)
        _error(stack.chat(a, token=key[:-1] + ("A" if key[-1] != "A" else "B")), 401, "unknown or revoked")
        # paths that try to reach b under a's name: none passes (Traefik cleans the path before it
        # routes, and the check reads the deployment from the path Traefik routed)
        for path in (f"/models/{a}/../{b}/health", f"/models/{a}/%2e%2e/{b}/health",
                     f"/models/{a}%2F..%2F{b}/health", f"/models/./{b}/health"):
            assert _raw_get(stack, path, key) in (400, 403, 404), path
        assert _raw_get(stack, f"/models/{a}/health", key) == 200

        # the admin token keeps both routers; a key for every deployment opens b too
        assert stack.chat(b).status_code == 200
        odd = httpx.get(f"{stack.settings.gateway_url}/models/{b}/health",
                        headers={"Authorization": f"bearer {stack.api_token()}"}, timeout=10)
        assert odd.status_code == 200, odd.text
        every = api.post("/v1/keys", json={"name": "all"}).json()
        assert stack.chat(b, token=every["key"]).status_code == 200
        dropped = _cli(stack, "keys", "revoke", every["id"])
        assert dropped.returncode == 0 and "revoked" in dropped.stdout, dropped.stderr
        assert stack.chat(b, token=every["key"]).status_code == 401

        # revoked: refused at the gateway within a second of the answer to the revoke
        key_id = key[4:16]
        url = f"{stack.settings.gateway_url}/models/{a}/health"
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {key}"}) as http:
            assert http.get(url).status_code == 200
            started = time.monotonic()
            revoked = api.delete(f"/v1/keys/{key_id}")
            assert revoked.status_code == 200, revoked.text
            while (response := http.get(url)).status_code == 200 and time.monotonic() - started < 5:
                time.sleep(0.01)
            took = time.monotonic() - started
        _error(response, 401, "unknown or revoked")
        assert took < REVOKED_WITHIN_S, f"the revoked key still opened {a} {took:.2f} s after the revoke"
        print(f"\nrevoked key refused at the gateway {took * 1000:.0f} ms after the revoke was sent")
        gone = _cli(stack, "keys", "revoke", key_id)
        assert gone.returncode == 1 and "no inference key" in gone.stderr
    finally:
        await _stop(client, a, b)


def test_the_keys_commands_explain_themselves():
    helped = subprocess.run([sys.executable, "-m", "berth.api.cli", "keys", "create", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--deployments" in helped.stdout and "shown this once" in helped.stdout


@pytest.fixture(scope="module")
def tokenless(tmp_path_factory):
    """A stack of its own whose worker has no token: its token file goes once everything is up (the
    API keeps the token it read), then the worker is killed and `berth up` starts another, which
    finds no token."""
    running = RunningStack(tmp_path_factory.mktemp("tokenless-home")).start()
    running.admin_token = running.api_token()  # the API's, which it keeps
    (running.home / "api-token").unlink()
    first = running.worker_pid()
    os.kill(first, signal.SIGKILL)
    log = running.settings.logs_dir / "worker.log"
    deadline = time.monotonic() + 60
    while "checked by the API at" not in log.read_text():
        assert time.monotonic() < deadline, "the new worker did not say it has no token:\n" + log.read_text()[-2000:]
        time.sleep(0.1)
    yield running
    code, leftovers = running.stop_and_reap()
    assert code == 0 and not leftovers, (code, leftovers)


async def test_a_worker_without_a_token_has_every_call_checked_by_the_api(tokenless, tiny_gguf, name):
    """No API token on the node: the forwardAuth router alone (no fast router, which would need the
    token): a call without a valid credential gets the API's 401, the admin token passes through the
    API's check; a public deployment needs nothing."""
    client = await tokenless.client()
    closed, open_ = f"{name}-closed", f"{name}-public"
    await asyncio.gather(_deploy(client, closed, tiny_gguf), _deploy(client, open_, tiny_gguf, public=True))
    try:
        await wait_for_status(client, closed, S.DEPLOYED, timeout_s=60)
        assert [router for router in RouteTable(tokenless.settings.routes_dir).route(closed)["http"]["routers"]] == [
            f"berth-{closed}_auth"]
        without = tokenless.chat(closed, token=None)
        assert without.status_code == 401 and "api-token" in without.json()["error"]["message"]
        assert tokenless.chat(closed, token="not-the-token").status_code == 401
        assert tokenless.chat(closed, token=tokenless.admin_token).status_code == 200, "the API's check passes it"
        await wait_for_status(client, open_, S.DEPLOYED, timeout_s=60)
        assert tokenless.chat(open_, token=None).status_code == 200
    finally:
        await _stop(client, closed, open_)