"""The node metrics and the console's Nodes page on a real cluster of two nodes on one host
(berth.testing.cluster_harness: `berth up` on 127.0.0.61, `berth join` on 127.0.0.62, one Temporal,
the real cluster workflow): both nodes at /metrics with their capacity and status, a drain from the
console, a killed node going DOWN; and the joined node's own prometheus.yml
(write_join_prometheus_config) run by the real Prometheus with every target up."""

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
                      extra_env={"BERTH_MEMORY_LIMIT": "1GiB"})
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
    print(f"n2 DOWN at /metrics {took:.1f} s after its kill -9")
