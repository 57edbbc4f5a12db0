"""The model endpoints behind the gateway need the API token, unless a deployment is public."""

import httpx

from berth.node.routes import delete_route, write_route
from berth.domain.pipeline import RouteRequest
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S
from berth.domain.temporal_names import workflow_id
from berth.testing.harness import start_deployment, wait_for_status


async def _deploy(client, name, model, public=False):
    await start_deployment(client, DeploymentSpec(name=name, model=str(model), public=public))
    return await wait_for_status(client, name, S.DEPLOYED)


async def _stop(client, name):
    handle = client.get_workflow_handle(workflow_id(name))
    await handle.signal("stop")
    await handle.result()


async def test_a_model_call_needs_the_token(stack, client, tiny_gguf, name):
    await _deploy(client, name, tiny_gguf)
    without = stack.chat(name, token=None)
    assert without.status_code == 401
    assert "api-token" in without.json()["error"]["message"]
    assert stack.chat(name, token="not-the-token").status_code == 401
    assert stack.chat(name).status_code == 200
    # the slow path (forwardAuth) accepts a token the fast path's exact match does not
    odd = httpx.post(
        f"{stack.settings.gateway_url}/models/{name}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"bearer  {stack.api_token()}"},
        timeout=60,
    )
    assert odd.status_code == 200, odd.text
    await _stop(client, name)


async def test_a_public_deployment_serves_without_a_token(stack, client, tiny_gguf, name):
    await _deploy(client, name, tiny_gguf, public=True)
    assert stack.chat(name, token=None).status_code == 200
    await _stop(client, name)


def test_the_route_table_holding_the_token_is_private(stack, name):
    route = f"T{name}"  # not a deployment name: the worker's reconcile leaves it alone
    path = write_route(stack.settings.routes_dir, RouteRequest(deployment=route, port=1, engine="llamacpp"), "token")
    try:
        assert path.stat().st_mode & 0o077 == 0, path
    finally:
        delete_route(stack.settings.routes_dir, route)
