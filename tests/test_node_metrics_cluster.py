"""The node metrics and the console's Nodes page on a real cluster of two nodes on one host
(berth.testing.cluster_harness: `berth up` on 127.0.0.61, `berth join` on 127.0.0.62, one Temporal,
the real cluster workflow): both nodes at /metrics with their capacity and status, a drain from the
console, two replicas placed one per node and counted where they run (the API's reservations, each
worker's engines by status, the console's table) and released at the stop, the joined node's own
prometheus.yml (write_join_prometheus_config) run by the real Prometheus with every target up, and
a killed node DOWN at /metrics."""

import re
import time

import httpx
import pytest

from berth.api.console import session as sessions
from berth.testing.cluster_harness import Cluster
from berth.testing.prometheus import RunningPrometheus, prometheus_binary
from berth.worker.prometheus_config import write_join_prometheus_config

GIB = 2**30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = Cluster(tmp_path_factory.mktemp("observe-cluster"), ["127.0.0.61", "127.0.0.62"],
                      extra_env={"BERTH_MEMORY_LIMIT": "1GiB"},
                      share_api_token=True)  # a joined node's routes without it: the mesh's forwardAuth
    try:
        running.start()
        yield running
    finally:
        left = running.close()
        assert not left, f"left behind: {left}"


def metrics(cluster: Cluster) -> str:
    with cluster.api() as api:
        answer = api.get("/metrics")
    assert answer.status_code == 200, answer.text
    return answer.text


def wait_for_metric(cluster: Cluster, line: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = metrics(cluster)
        if line in text:
            return text
        if time.monotonic() > deadline:
            found = "\n".join(l for l in text.splitlines() if l.startswith("berth_node_"))
            raise AssertionError(f"{line!r} not at /metrics within {timeout_s} s:\n{found}")
        time.sleep(0.25)


def console(cluster: Cluster) -> tuple[httpx.Client, dict]:
    token = cluster.first.api_token()
    client = httpx.Client(base_url=cluster.first.api_url, timeout=30)
    assert client.post("/ui/login", data={"token": token}).status_code == 303
    csrf = sessions.csrf_token(token, client.cookies.get(sessions.COOKIE))
    return client, {"X-Berth-CSRF": csrf, "Sec-Fetch-Site": "same-origin"}


def test_every_node_at_metrics_with_its_capacity_and_status(cluster):
    text = wait_for_metric(cluster, 'berth_node_status{node="n2",status="READY"} 1')
    text = wait_for_metric(cluster, 'berth_node_status{node="n1",status="READY"} 1') if "n1" not in text else text
    for node in ("n1", "n2"):
        assert f'berth_node_capacity_bytes{{node="{node}"}} {GIB}' in text
        assert f'berth_node_reserved_bytes{{node="{node}"}} 0' in text
        assert f'berth_node_instances{{node="{node}"}} 0' in text
        assert len(re.findall(rf'^berth_node_status{{node="{node}",status="\w+"}} 1$', text, re.M)) == 1
    assert "berth_deployments{" in text


def test_the_console_lists_both_and_drains_the_joined_one(cluster):
    client, own = console(cluster)
    try:
        page = client.get("/ui/nodes")
        assert page.status_code == 200
        for part in ('id="node-n1"', 'id="node-n2"', "127.0.0.61:", "127.0.0.62:", "1 GiB"):
            assert part in page.text, part
        drained = client.post("/ui/api/nodes/n2/drain", json={}, headers=own)
        assert drained.status_code == 200 and drained.json() == {"node": "n2", "status": "DRAINING"}
        assert 'data-node-action="undrain" data-node="n2"' in client.get("/ui/api/nodes").json()["html"]
        wait_for_metric(cluster, 'berth_node_status{node="n2",status="DRAINING"} 1')
        assert client.post("/ui/api/nodes/n2/undrain", json={}, headers=own).json()["status"] == "READY"
        wait_for_metric(cluster, 'berth_node_status{node="n2",status="READY"} 1')
    finally:
        client.close()


def worker_gauges(cluster: Cluster, node: str) -> dict[str, int]:
    """berth_instances of one node, from its worker's own endpoint."""
    text = httpx.get(f"http://127.0.0.1:{cluster.settings(node).worker_metrics_port}/metrics", timeout=5).text
    gauges = {}
    for labels, value in re.findall(r"^berth_instances\{([^}]*)\} (\d+)$", text, re.M):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs.get("node") == node:
            gauges[pairs["status"]] = int(value)
    return gauges


def test_two_replicas_one_per_node_counted_where_they_run(cluster, tiny_gguf):
    """Counted from placement on: the cluster's reservations at the API, the engines at each node's
    worker (STARTING once launched, DEPLOYED once supervise watches them: a replica on a node whose
    route the other gateways cannot reach yet stays STARTING, so either is taken), the console's
    table and a deployment's page linking each instance to its node; after the stop, all back to 0."""
    with cluster.api() as api:
        spec = {"name": "obs-two", "model": str(tiny_gguf), "replicas": 2, "context_size": 1024}
        assert api.post("/v1/deployments", json=spec).status_code == 202
        deadline = time.monotonic() + 120
        while True:
            state = api.get("/v1/deployments/obs-two").json()
            launched = [i for i in state["instances"] if i["status"] in ("STARTING", "DEPLOYED")]
            if len(launched) == 2:
                break
            assert time.monotonic() < deadline, (state["status"], state.get("error"), state["instances"])
            time.sleep(0.5)
        assert sorted(i["node"] for i in launched) == ["n1", "n2"]  # spread
        try:
            text = wait_for_metric(cluster, 'berth_node_instances{node="n2"} 1')
            assert 'berth_node_instances{node="n1"} 1' in text
            for node in ("n1", "n2"):
                reserved = re.search(rf'^berth_node_reserved_bytes{{node="{node}"}} (\d+)$', text, re.M)
                assert reserved and 0 < int(reserved.group(1)) <= GIB, text
                gauges = worker_gauges(cluster, node)
                assert gauges["STARTING"] + gauges["DEPLOYED"] == 1 and gauges["ERROR"] == 0, (node, gauges)
            client, _ = console(cluster)
            try:
                table = client.get("/ui/api/nodes").json()["html"]
                for node in ("n1", "n2"):
                    row = re.search(rf'<tr id="node-{node}".*?</tr>', table, re.S).group(0)
                    assert re.search(r'<td class="num">1</td>', row), row  # its instance
                page = client.get("/ui/deployments/obs-two").text
                assert 'href="/ui/nodes#node-n1"' in page and 'href="/ui/nodes#node-n2"' in page
            finally:
                client.close()
        finally:
            api.post("/v1/deployments/obs-two/stop")
    # stopped: the reservations released, the engines gone from the workers' counts
    wait_for_metric(cluster, 'berth_node_instances{node="n2"} 0')
    wait_for_metric(cluster, 'berth_node_instances{node="n1"} 0')
    for node in ("n1", "n2"):
        deadline = time.monotonic() + 30
        while (gauges := worker_gauges(cluster, node)) != {"STARTING": 0, "DEPLOYED": 0, "ERROR": 0}:
            assert time.monotonic() < deadline, (node, gauges)
            time.sleep(0.25)


@pytest.mark.skipif(prometheus_binary() is None, reason="no prometheus: `make test` installs it")
def test_the_joined_nodes_prometheus_config_scrapes_its_worker_and_gateway(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTH_PROMETHEUS_SCRAPE_INTERVAL", "1s")
    config = write_join_prometheus_config(cluster.settings("n2"))
    assert config == cluster.settings("n2").home / "prometheus" / "prometheus.yml"
    prometheus = RunningPrometheus(config, tmp_path / "prometheus").start()
    try:
        def up():
            targets = prometheus.targets()
            jobs = {t["labels"]["job"]: t["health"] for t in targets}
            return jobs == {"berth-worker": "up", "gateway": "up"} and targets

        prometheus.wait_for("the joined node's worker and gateway up", up)
        # the joined worker's own series: the SDK's, and its gateway's Traefik series
        names = prometheus.wait_for("series", lambda: (n := prometheus.metric_names()) >= {"temporal_num_pollers"} and n)
        assert any(name.startswith("traefik_") for name in names)
    finally:
        prometheus.stop()


def test_a_killed_node_is_down_at_metrics(cluster):
    wait_for_metric(cluster, 'berth_node_status{node="n2",status="READY"} 1')
    cluster.kill_node("n2")
    started = time.monotonic()
    text = wait_for_metric(cluster, 'berth_node_status{node="n2",status="DOWN"} 1', timeout_s=40)
    took = time.monotonic() - started
    assert 'berth_node_status{node="n2",status="READY"} 0' in text
    assert 'berth_node_status{node="n1",status="READY"} 1' in text
    assert 'berth_node_instances{node="n2"} 0' in text
    print(f"n2 DOWN at /metrics {took:.1f} s after its kill -9")
