"""The file server as `berth up` runs it: the worker starts it (with the cluster token) and its
route reaches it through the node's gateway; the route goes when the worker stops. The API keeps a
plain path plain while there is no cluster workflow (one node), and a deploy of this node's own
`NODE:/path` serves in place."""

import subprocess
import sys

import httpx
import pytest
import yaml

from berth.node.file_server import ROUTE_FILE
from berth.testing.harness import RunningStack, wait_for_api_status

TOKEN = "files-stack-test-token"


@pytest.fixture(scope="module")
def files_stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("files-home")
    running = RunningStack(home, extra_env={"BERTH_CLUSTER_TOKEN": TOKEN}).start()
    try:
        yield running
    finally:
        code, leftovers = running.stop_and_reap()
        assert code == 0, "".join(running.output)[-3000:]
        assert not leftovers, leftovers
        assert not (home / "routes" / ROUTE_FILE).exists(), "the route left with the file server"


def test_the_worker_does_not_load_a_web_framework():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, berth.worker.main; print(sorted(m for m in ('fastapi', 'starlette', "
                               "'uvicorn', 'aiohttp') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    assert loaded.stdout.strip() == "[]"


def test_the_worker_serves_its_files_through_its_gateway(files_stack, tiny_gguf):
    route = files_stack.home / "routes" / ROUTE_FILE
    assert TOKEN in yaml.safe_load(route.read_text())["http"]["routers"]["_berth-files"]["rule"]
    url = f"{files_stack.settings.gateway_url}/_berth/files{tiny_gguf}"
    head = None
    for _ in range(100):  # the gateway picks the route up within moments of the worker's start
        head = httpx.head(url, headers={"X-Berth-Cluster-Token": TOKEN})
        if head.status_code == 200:
            break
    assert head.status_code == 200, head.text
    assert int(head.headers["content-length"]) == tiny_gguf.stat().st_size and len(head.headers["x-berth-sha256"]) == 64
    assert httpx.get(url).status_code == 401 and httpx.get(url, headers={"X-Berth-Cluster-Token": "x"}).status_code == 403


def test_without_a_cluster_workflow_a_plain_path_stays_plain(files_stack, tiny_gguf):
    """No cluster workflow (one machine): the path is not qualified, the deployment serves in place;
    this node's own NODE:/path serves in place too."""
    with files_stack.api() as api:
        for name, model in (("plain-path", str(tiny_gguf)), ("own-node-path", f"test-node:{tiny_gguf}")):
            accepted = api.post("/v1/deployments", json={"name": name, "model": model})
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["spec"]["model"] == model
            state = wait_for_api_status(api, name, {"DEPLOYED", "FAILED"}, timeout_s=60)
            assert state["status"] == "DEPLOYED", state["error"]
            api.post(f"/v1/deployments/{name}/stop")
            wait_for_api_status(api, name, {"STOPPED"}, timeout_s=60)
        refused = api.post("/v1/deployments", json={"name": "bad-node-path", "model": "Node-A:/srv/q.gguf"})
        assert refused.status_code in (400, 422) and "not a node id" in refused.text
        outside = api.post("/v1/deployments", json={"name": "outside", "model": "test-node:/etc/passwd"})
        assert outside.status_code == 400 and "outside the folders this node reads models from" in outside.text
