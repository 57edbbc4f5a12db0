"""GET /v1/nodes, POST /v1/nodes/{id}/drain|undrain and `berth nodes`: the table (pure), and the
REST errors against a real Temporal: no cluster workflow -> 503; an unknown node -> 404 with the
known ones; the workflow validator's refusal -> 400 with its message. For the errors, a stand-in
cluster workflow with the names and shapes of berth.domain.cluster runs on a Temporal dev server
(tests/test_join_cluster.py checks the real one, from branch core, through `berth up` + `berth join`)."""

from datetime import datetime, timezone

import pytest
import httpx
from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from berth.api.app import create_app
from berth.api.cli.nodes import gpus_cell, nodes_table, size
from berth.api.facade import Deployments
from berth.common.payload_converter import berth_data_converter
from berth.domain.cluster import (
    CLUSTER_WORKFLOW_ID,
    CLUSTER_WORKFLOW_TYPE,
    DRAIN_UPDATE,
    NODES_QUERY,
    UNDRAIN_UPDATE,
    ClusterView,
    NodeFacts,
    NodeGpu,
    NodeStatus,
    NodeView,
)
from berth.settings import Settings
from berth.worker.temporal_server import temporal_binary

TOKEN = "admin-token-for-these-tests"
GIB = 2**30


# ---- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bytes, text", [
    (None, "?"), (0, "0"), (512, "512 B"), (2048, "2.0 KiB"), (253 * 2**20, "253 MiB"),
    (int(1.5 * GIB), "1.5 GiB"), (80 * GIB, "80 GiB"), (3 * 2**40, "3.0 TiB"),
])
def test_sizes(n_bytes, text):
    assert size(n_bytes) == text


@pytest.mark.parametrize("gpus, text", [
    ([], "-"),
    ([{"name": "H100", "memory_bytes": 80 * GIB}] * 2, "2x H100 (80 GiB)"),
    ([{"name": "A10", "memory_bytes": 24 * GIB}, {"name": "T4", "memory_bytes": 16 * GIB}],
     "1x A10 (24 GiB), 1x T4 (16 GiB)"),
])
def test_gpus(gpus, text):
    assert gpus_cell(gpus) == text


def test_the_nodes_table_has_a_row_per_node_sorted_with_status_reasons_and_no_terminal_controls():
    nodes = [
        {"id": "n2", "address": "http://10.0.0.2:8080", "status": "DOWN", "reason": "no heartbeat for 8 s\x1b[2J",
         "ram_bytes": 64 * GIB, "gpus": [], "capacity_bytes": 48 * GIB, "reserved_bytes": 0, "instances": []},
        {"id": "n1", "address": "http://10.0.0.1:8080", "status": "READY", "reason": None,
         "ram_bytes": 128 * GIB, "gpus": [{"name": "H100", "memory_bytes": 80 * GIB}],
         "capacity_bytes": 100 * GIB, "reserved_bytes": int(1.5 * GIB), "instances": ["a-1", "b-1"]},
    ]
    lines = nodes_table(nodes).splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "STATUS", "RAM", "GPUS", "CAPACITY", "RESERVED", "INSTANCES"]
    assert lines[1].split() == ["n1", "http://10.0.0.1:8080", "READY", "128", "GiB", "1x", "H100", "(80", "GiB)",
                                "100", "GiB", "1.5", "GiB", "2"]
    assert lines[2].startswith("n2") and "DOWN (no heartbeat for 8 s\\x1b[2J)" in lines[2]
    assert "\x1b" not in nodes_table(nodes)
    assert lines[2].split()[-1] == "0"


# ---- the REST errors, against a real Temporal ---------------------------------------------------------


def facts(node_id: str) -> NodeFacts:
    return NodeFacts(node_id=node_id, gateway_url=f"http://127.0.0.1:1/{node_id}", incarnation="i1", os="linux",
                     arch="x86_64", ram_bytes=8 * GIB, gpus=[NodeGpu(name="T4", memory_bytes=16 * GIB)],
                     engines=["llamacpp"], capacity_bytes=4 * GIB)


@workflow.defn(name=CLUSTER_WORKFLOW_TYPE)
class StandInCluster:
    """The names and shapes of berth.domain.cluster, no more: two nodes, drain/undrain with validators."""

    def __init__(self) -> None:
        now = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.nodes = {
            node_id: NodeView(facts=facts(node_id), status=NodeStatus.READY, since=now, reserved_bytes=GIB,
                              instances=[f"dep-{node_id}"])
            for node_id in ("n1", "n2")
        }
        self.nodes["n2"].status = NodeStatus.DOWN

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.query(name=NODES_QUERY)
    def view(self) -> ClusterView:
        return ClusterView(nodes=list(self.nodes.values()), grace_s=8)

    @workflow.update(name=DRAIN_UPDATE)
    def drain(self, node: str) -> NodeView:
        self.nodes[node].status = NodeStatus.DRAINING
        return self.nodes[node]

    @drain.validator
    def _check_drain(self, node: str) -> None:
        if node not in self.nodes:
            raise ApplicationError(f"no node {node!r}")
        if self.nodes[node].status is NodeStatus.DOWN:
            raise ApplicationError(f"{node} is DOWN: nothing to drain")

    @workflow.update(name=UNDRAIN_UPDATE)
    def undrain(self, node: str) -> NodeView:
        self.nodes[node].status = NodeStatus.READY
        return self.nodes[node]


@pytest.fixture(scope="module")
async def temporal():
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), data_converter=berth_data_converter,
    ) as env:
        yield env


@pytest.fixture
async def api(temporal, tmp_path):
    """The app in this event loop (a TestClient would block the loop the stand-in's worker runs in)."""
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path)})
    app = create_app(settings, facade=Deployments(settings, client=temporal.client), token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return body["error"]["message"]


async def test_no_cluster_workflow_is_a_503_saying_the_worker_has_not_started_it(api):
    message = error_of(await api.get("/v1/nodes"), 503, "unavailable")
    assert CLUSTER_WORKFLOW_ID in message and "no berth worker has started it" in message
    error_of(await api.post("/v1/nodes/n1/drain"), 503, "unavailable")


async def test_the_routes_take_the_admin_token_only(api):
    for method, path in (("GET", "/v1/nodes"), ("GET", "/v1/nodes/n1"), ("POST", "/v1/nodes/n1/drain"),
                         ("POST", "/v1/nodes/n1/undrain")):
        assert (await api.request(method, path, headers={"Authorization": ""})).status_code == 401
        assert (await api.request(method, path, headers={"Authorization": "Bearer wrong"})).status_code == 401


async def test_nodes_unknown_ids_refusals_and_drain_through_a_cluster_workflow(api, temporal):
    client = temporal.client
    async with Worker(client, task_queue="berth-standin", workflows=[StandInCluster],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        handle = await client.start_workflow(CLUSTER_WORKFLOW_TYPE, id=CLUSTER_WORKFLOW_ID, task_queue="berth-standin")
        try:
            listed = await api.get("/v1/nodes")
            assert listed.status_code == 200, listed.text
            body = listed.json()
            assert body["grace_s"] == 8 and [node["id"] for node in body["nodes"]] == ["n1", "n2"]
            n1 = body["nodes"][0]
            assert n1 | {"since": None} == {
                "id": "n1", "address": "http://127.0.0.1:1/n1", "status": "READY", "since": None, "reason": None,
                "os": "linux", "arch": "x86_64", "ram_bytes": 8 * GIB, "gpus": [{"name": "T4", "memory_bytes": 16 * GIB}],
                "docker": False, "mlx": False, "engines": ["llamacpp"], "capacity_bytes": 4 * GIB,
                "reserved_bytes": GIB, "free_bytes": 3 * GIB, "instances": ["dep-n1"],
            }

            message = error_of(await api.get("/v1/nodes/n9"), 404, "not_found")
            assert message == "no node 'n9' in the cluster; the nodes: n1, n2"
            error_of(await api.post("/v1/nodes/n9/drain"), 404, "not_found")
            message = error_of(await api.post("/v1/nodes/BAD..id/drain"), 400, "invalid_request")
            assert "is not a node id" in message
            message = error_of(await api.post("/v1/nodes/n2/drain"), 400, "invalid_request")
            assert message == "n2 is DOWN: nothing to drain"  # the validator's own words

            drained = await api.post("/v1/nodes/n1/drain")
            assert drained.status_code == 200 and drained.json()["status"] == "DRAINING"
            assert (await api.get("/v1/nodes/n1")).json()["status"] == "DRAINING"
            assert (await api.post("/v1/nodes/n1/undrain")).json()["status"] == "READY"
        finally:
            await handle.terminate()
