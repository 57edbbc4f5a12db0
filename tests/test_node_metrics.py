"""The cluster's nodes at /metrics and in the console's Nodes page, and this node's engines by status
at the worker's endpoint (docs/observability.md, docs/console.md).

Pure parts are table-driven. The rest runs against a real Temporal dev server with a stand-in of the
cluster workflow (type BerthCluster, id berth-cluster, its `nodes` query and `drain`/`undrain`
updates with the shapes of berth.domain.cluster): the API's one query per scrape, the absence of
the node metrics without a cluster workflow, the console's table and its buttons. The real cluster
workflow (berth.workflows.cluster) is checked by tests/test_metrics_e2e.py's stack once it exists.
"""

import asyncio
import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import yaml
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from berth.api.app import create_app
from berth.api.console import session as sessions
from berth.api.console.node_rows import address_of, bytes_text, node_rows
from berth.api.facade import Deployments
from berth.api.facade.cluster_view import NO_CLUSTER, ClusterViews
from berth.api.routes_metrics import node_lines
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
from berth.domain.status import InstanceStatus
from berth.domain.temporal_names import SEARCH_ATTRIBUTES
from berth.node.instance_counts import InstanceCounts
from berth.settings import Settings
from berth.worker.prometheus_config import write_join_prometheus_config
from berth.worker.temporal_server import temporal_binary

GIB = 1 << 30
SINCE = datetime(2026, 12, 3, 0, 0, 0, tzinfo=timezone.utc)
TOKEN = "admin-token-for-node-tests"
QUEUE = "observe-cluster-standin"


def node(node_id: str, status=NodeStatus.READY, capacity=8 * GIB, reserved=0, instances=(), **facts) -> NodeView:
    return NodeView(
        facts=NodeFacts(
            node_id=node_id, gateway_url=f"http://127.0.0.6{len(node_id) % 9 + 1}:8081", incarnation="i1",
            os="linux", arch="x86_64", ram_bytes=16 * GIB, capacity_bytes=capacity, engines=["llamacpp"], **facts,
        ),
        status=status, since=SINCE, reserved_bytes=reserved, instances=list(instances),
    )


VIEW = ClusterView(nodes=[
    node("node-b", NodeStatus.DRAINING, reserved=2 * GIB, instances=["a-1", "b-1"]),
    node("node-a", reserved=512 << 20, instances=["a-2"]),
    node("node-c", NodeStatus.DOWN, capacity=0),
])


# ---- pure ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "view, present, absent",
    [
        (None, [], ["berth_node"]),
        (ClusterView(), ["# TYPE berth_node_capacity_bytes gauge"], ['node="']),
        (
            VIEW,
            [
                f'berth_node_capacity_bytes{{node="node-a"}} {8 * GIB}',
                f'berth_node_reserved_bytes{{node="node-b"}} {2 * GIB}',
                'berth_node_instances{node="node-b"} 2',
                'berth_node_instances{node="node-c"} 0',
                'berth_node_capacity_bytes{node="node-c"} 0',
                'berth_node_status{node="node-b",status="DRAINING"} 1',
                'berth_node_status{node="node-b",status="READY"} 0',
                'berth_node_status{node="node-c",status="DOWN"} 1',
                'berth_node_status{node="node-a",status="READY"} 1',
            ],
            [],
        ),
    ],
)
def test_node_lines(view, present, absent):
    text = "\n".join(node_lines(view))
    for line in present:
        assert line in text
    for part in absent:
        assert part not in text
    if view is not None and view.nodes:  # every node has one line per status, exactly one of them 1
        for n in view.nodes:
            ones = re.findall(rf'berth_node_status{{node="{n.facts.node_id}",status="\w+"}} 1', text)
            assert len(ones) == 1 and len(re.findall(rf'berth_node_status{{node="{n.facts.node_id}"', text)) == 4
        assert text.index('node="node-a"') < text.index('node="node-b"')  # sorted by node


@pytest.mark.parametrize(
    "size, text",
    [(0, "0 B"), (-5, "0 B"), (1000, "1000 B"), (1024, "1 KiB"), (512 << 20, "512 MiB"), (int(7.8 * GIB), "7.8 GiB"),
     (8 * GIB, "8 GiB"), (3 << 40, "3 TiB"), (150 * GIB, "150 GiB")],
)
def test_bytes_text(size, text):
    assert bytes_text(size) == text


@pytest.mark.parametrize(
    "url, address",
    [("http://127.0.0.61:8081", "127.0.0.61:8081"), ("https://node-a.lan", "node-a.lan"), ("", "")],
)
def test_address_of(url, address):
    assert address_of(url) == address


def test_node_rows():
    gpu = node("node-g", gpus=[NodeGpu(name="H100", memory_bytes=80 * GIB)], reserved=6 * GIB, instances=["x-1"])
    rows = node_rows(ClusterView(nodes=[*VIEW.nodes, gpu]), now=SINCE + timedelta(minutes=5))
    assert [r.node_id for r in rows] == ["node-a", "node-b", "node-c", "node-g"]
    a, b, c, g = rows
    assert (a.status, a.status_class, a.action, a.since, a.instances) == ("READY", "ok", "drain", "5m", 1)
    assert (a.capacity, a.reserved, a.reserved_percent, a.ram, a.gpus) == ("8 GiB", "512 MiB", 6, "16 GiB", "none")
    assert (b.status_class, b.action, b.instances) == ("warn", "undrain", 2)
    assert (c.status_class, c.reserved_percent, c.capacity, c.action) == ("bad", 0, "0 B", "")
    assert (g.gpus, g.reserved_percent) == ("H100 (80 GiB)", 75)
    assert node_rows(None) == []


def test_join_config_has_the_nodes_own_jobs_only(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTH_PROMETHEUS_SCRAPE_INTERVAL", "5s")
    settings = Settings.from_env({
        "BERTH_HOME": str(tmp_path), "BERTH_NODE_ID": "node-j", "BERTH_WORKER_METRICS_PORT": "9511",
        "BERTH_GATEWAY_METRICS_PORT": "8192",
    })
    path = write_join_prometheus_config(settings)
    assert path == tmp_path / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"berth-worker", "gateway", "engines"}  # no API, no Temporal server
    assert jobs["berth-worker"]["static_configs"][0]["targets"] == ["127.0.0.1:9511"]
    assert jobs["gateway"]["static_configs"][0]["targets"] == ["127.0.0.1:8192"]
    assert jobs["engines"]["file_sd_configs"][0]["files"] == [str(tmp_path / "prometheus" / "engines" / "*.json")]
    assert (tmp_path / "prometheus" / "engines").is_dir()
    assert config["global"]["scrape_interval"] == "5s"
    assert not (tmp_path / "prometheus" / "api-token").exists() and not (tmp_path / "api-token").exists()
    # a port set to 0 leaves its job out
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_GATEWAY_METRICS_PORT": "0"})
    jobs = [job["job_name"] for job in yaml.safe_load(write_join_prometheus_config(settings).read_text())["scrape_configs"]]
    assert jobs == ["berth-worker", "engines"]


# ---- this node's engines by status, on the worker's real exporter ---------------------------------


def test_instances_by_status_on_the_workers_endpoint(worker_meter):
    from tests.test_observability import scrape

    counts = InstanceCounts()

    def gauges() -> dict[str, int]:
        text = scrape(worker_meter)
        found = re.findall(r'^berth_instances\{([^}]*)\} (\d+)$', text, re.M)
        out = {}
        for labels, value in found:
            assert 'node="node-a"' in labels
            out[re.search(r'status="(\w+)"', labels).group(1)] = int(value)
        return out

    counts.set("a-1", InstanceStatus.STARTING, "node-a")
    counts.set("b-1", InstanceStatus.STARTING, "node-a")
    assert gauges() == {"STARTING": 2, "DEPLOYED": 0, "ERROR": 0}
    counts.set("a-1", InstanceStatus.DEPLOYED)
    counts.set("b-1", InstanceStatus.ERROR)
    assert gauges() == {"STARTING": 0, "DEPLOYED": 1, "ERROR": 1}
    counts.forget("b-1")
    counts.forget("b-1")  # idempotent
    assert gauges() == {"STARTING": 0, "DEPLOYED": 1, "ERROR": 0}
    counts.resync({"a-1", "c-1"})  # a record the count lacked (a restarted worker): STARTING until supervise
    assert gauges() == {"STARTING": 1, "DEPLOYED": 1, "ERROR": 0}
    counts.resync(set())
    assert gauges() == {"STARTING": 0, "DEPLOYED": 0, "ERROR": 0} == counts.counts()


@pytest.fixture
def worker_meter(tmp_path, monkeypatch):
    from berth.node import metrics
    from berth.testing.harness import free_port
    from berth.worker.metrics_runtime import worker_runtime

    port = free_port()
    monkeypatch.setenv("BERTH_NODE_ID", "node-a")
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_WORKER_METRICS_PORT": str(port)})
    runtime = worker_runtime(settings)  # kept: its exporter lives as long as it does
    assert runtime is not None
    yield f"http://127.0.0.1:{port}/metrics"
    metrics.install(None)


# ---- against Temporal, with a stand-in of the cluster workflow ------------------------------------


@workflow.defn(name=CLUSTER_WORKFLOW_TYPE)
class StandInCluster:
    """The shapes of the real one (berth.domain.cluster): query `nodes`, updates `drain`/`undrain`
    whose validators refuse an unknown node, naming the known ones."""

    def __init__(self) -> None:
        self.view = ClusterView()

    @workflow.run
    async def run(self, view: ClusterView) -> None:
        self.view = view
        await workflow.wait_condition(lambda: False)

    @workflow.query(name=NODES_QUERY)
    def nodes(self) -> ClusterView:
        return self.view

    def _node(self, node_id: str) -> NodeView:
        for each in self.view.nodes:
            if each.facts.node_id == node_id:
                return each
        known = ", ".join(n.facts.node_id for n in self.view.nodes) or "none"
        raise ApplicationError(f"no node {node_id!r} in the cluster; its nodes: {known}")

    @workflow.update(name=DRAIN_UPDATE)
    def drain(self, node_id: str) -> NodeView:
        found = self._node(node_id)
        found.status, found.reason = NodeStatus.DRAINING, "drained by the user"
        return found

    @drain.validator
    def _drain_known(self, node_id: str) -> None:
        self._node(node_id)

    @workflow.update(name=UNDRAIN_UPDATE)
    def undrain(self, node_id: str) -> NodeView:
        found = self._node(node_id)
        found.status, found.reason = NodeStatus.READY, None
        return found

    @undrain.validator
    def _undrain_known(self, node_id: str) -> None:
        self._node(node_id)


@pytest.fixture(scope="module")
async def temporal():
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
    ) as env:
        yield env.client


async def start_cluster(client: Client, view: ClusterView):
    return await client.start_workflow(
        CLUSTER_WORKFLOW_TYPE, view, id=CLUSTER_WORKFLOW_ID, task_queue=QUEUE,
    )


def cluster_worker(client: Client) -> Worker:
    return Worker(client, task_queue=QUEUE, workflows=[StandInCluster], workflow_runner=UnsandboxedWorkflowRunner())


def api(tmp_path, client: Client):
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path)})
    app = create_app(settings, facade=Deployments(settings, client), token=TOKEN)
    return app, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000")


async def test_no_cluster_workflow_no_node_metrics_and_still_200(temporal, tmp_path):
    views = ClusterViews()
    assert await views.view(temporal) is None and views.reason == NO_CLUSTER
    _, http = api(tmp_path, temporal)
    async with http:
        answer = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    assert "berth_deployments{" in answer.text and "berth_node_" not in answer.text


async def test_the_nodes_page_without_a_cluster_says_why(temporal, tmp_path):
    # (before the tests that start the stand-in: a terminated cluster workflow is not "none")
    _, http = api(tmp_path, temporal)
    async with http:
        await http.post("/ui/login", data={"token": TOKEN})
        page = await http.get("/ui/nodes")
        assert page.status_code == 200 and "No cluster view: no cluster workflow" in page.text
        assert "No node has joined the cluster." in page.text
        csrf = sessions.csrf_token(TOKEN, http.cookies.get(sessions.COOKIE))
        drained = await http.post(
            "/ui/api/nodes/node-a/drain", json={}, headers={"X-Berth-CSRF": csrf, "Sec-Fetch-Site": "same-origin"}
        )
        assert drained.status_code == 503 and "is not running" in drained.json()["error"]["message"]


async def test_one_query_per_scrape_at_most_and_the_nodes_at_metrics(temporal, tmp_path):
    handle = await start_cluster(temporal, VIEW)
    try:
        async with cluster_worker(temporal):
            views = ClusterViews(cache_s=60)
            answers = await asyncio.gather(*(views.view(temporal) for _ in range(50)))
            assert views.queries == 1 and all(a == answers[0] for a in answers)
            assert {n.facts.node_id for n in answers[0].nodes} == {"node-a", "node-b", "node-c"}
            assert await views.view(temporal) is answers[0] and views.queries == 1  # cached
            await views.view(temporal, fresh=True)
            assert views.queries == 2

            app, http = api(tmp_path, temporal)
            async with http:
                scrapes = await asyncio.gather(
                    *(http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) for _ in range(10))
                )
            assert app.state.cluster_views.queries == 1  # ten scrapes within a second: one query
            for scraped in scrapes:
                assert scraped.status_code == 200
                assert f'berth_node_capacity_bytes{{node="node-a"}} {8 * GIB}' in scraped.text
                assert 'berth_node_status{node="node-b",status="DRAINING"} 1' in scraped.text
                assert 'berth_node_instances{node="node-b"} 2' in scraped.text
        # the worker that runs the cluster workflow is gone. A caller with an answer gets it at once
        # while the next query waits in the background; once that one has failed, the nodes are gone
        views.cache_s = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await views.view(temporal) is not None and loop.time() - started < 0.5
        await asyncio.wait_for(asyncio.shield(views._asking), 5)
        assert views.reason and await views.view(temporal) is None
        # without an answer, the first caller waits for the query, at most its timeout
        views = ClusterViews()
        started = asyncio.get_running_loop().time()
        assert await views.view(temporal) is None and views.reason
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await handle.terminate()


async def test_the_nodes_page_lists_and_drains(temporal, tmp_path):
    handle = await start_cluster(temporal, VIEW)
    try:
        async with cluster_worker(temporal):
            _, http = api(tmp_path, temporal)
            async with http:
                # without the cookie: the page redirects, the table and the buttons are refused
                assert (await http.get("/ui/nodes")).status_code == 303
                assert (await http.get("/ui/api/nodes")).status_code == 401
                assert (await http.post("/ui/api/nodes/node-a/drain", json={})).status_code == 401
                logged = await http.post("/ui/login", data={"token": TOKEN})
                assert logged.status_code == 303
                csrf = sessions.csrf_token(TOKEN, http.cookies.get(sessions.COOKIE))
                own = {"X-Berth-CSRF": csrf, "Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}

                page = await http.get("/ui/nodes")
                assert page.status_code == 200 and "Content-Security-Policy" in page.headers
                for part in ("node-a", "node-b", "node-c", "READY", "DRAINING", "DOWN", "8 GiB", "512 MiB", "16 GiB",
                             'data-node-action="undrain" data-node="node-b"', 'data-node-action="drain" data-node="node-a"',
                             'href="/ui/nodes" aria-current="page"'):
                    assert part in page.text, part
                table = (await http.get("/ui/api/nodes")).json()
                assert table["count"] == 3 and table["why"] is None and "node-c" in table["html"]

                # a cross-site POST, one without the CSRF token: refused before the cluster is asked
                cross = await http.post("/ui/api/nodes/node-a/drain", json={}, headers={**own, "Sec-Fetch-Site": "cross-site"})
                assert cross.status_code == 403 and cross.json()["error"]["code"] == "cross_site_refused"
                bare = await http.post("/ui/api/nodes/node-a/drain", json={}, headers={"Sec-Fetch-Site": "same-origin"})
                assert bare.status_code == 403 and bare.json()["error"]["code"] == "csrf_refused"

                drained = await http.post("/ui/api/nodes/node-a/drain", json={}, headers=own)
                assert drained.status_code == 200 and drained.json() == {"node": "node-a", "status": "DRAINING"}
                table = (await http.get("/ui/api/nodes")).json()
                assert 'data-node-action="undrain" data-node="node-a"' in table["html"]  # read afresh after the change
                undrained = await http.post("/ui/api/nodes/node-a/undrain", json={}, headers=own)
                assert undrained.json()["status"] == "READY"

                # an unknown node: 404 naming the known ones; a malformed id never reaches Temporal
                unknown = await http.post("/ui/api/nodes/node-z/drain", json={}, headers=own)
                assert unknown.status_code == 404 and "node-a" in unknown.json()["error"]["message"]
                for bad in ("NODE-A", "a" * 64, "-x", "x%20y", "%3Cscript%3E"):
                    refused = await http.post(f"/ui/api/nodes/{bad}/drain", json={}, headers=own)
                    assert refused.status_code in (400, 404), (bad, refused.text)
                    # JSON, shown by console.js through textContent: never markup
                    assert refused.headers["content-type"].startswith("application/json")
    finally:
        await handle.terminate()
