"""Observability end to end, with the real Prometheus (Debian's `prometheus`; `make test` installs
it) running the config `berth up` wrote, as it is, and asked through its own HTTP API:

- every target of every job is up (API with the bearer token, worker, gateway, Temporal, engines);
- berth_deployments{status="DEPLOYED"} counts the deployed ones;
- requests through the gateway grow Traefik's request counter for that deployment;
- a kill -9 of an engine grows berth's restart counter with code CONTAINER_EXITED;
- the engines' own metrics are scraped with the deployment label;
- the Grafana dashboard's every query names a metric that the live scrape has;
- `temporal workflow metadata` shows a FAILED deployment's summary, code and guidance.
"""

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from berth.domain.metric_names import CLUSTER_METRICS
from berth.testing.harness import RunningStack, engine_processes, wait_for_api_status
from berth.testing.prometheus import RunningPrometheus, prometheus_binary
from berth.worker.temporal_server import temporal_binary

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "berth.json"
JOBS = {"berth-api", "berth-worker", "gateway", "temporal", "engines"}
# The node panels' metrics (berth_node_*) come from the cluster workflow's `nodes` query: a stack
# without that workflow (berth.workflows.cluster: the core branch) has none of them, and the API
# leaves them out. Allowed to be missing only while the tree has no cluster workflow; once it has
# one, `berth up` starts it and every node metric must be in the live scrape like any other.
HAS_CLUSTER_WORKFLOW = importlib.util.find_spec("berth.workflows.cluster") is not None
CLUSTER_ONLY = set() if HAS_CLUSTER_WORKFLOW else {metric.name for metric in CLUSTER_METRICS}

pytestmark = pytest.mark.skipif(prometheus_binary() is None, reason="no prometheus: `make test` installs it")


@pytest.fixture(scope="module")
def observed(tmp_path_factory, tiny_gguf, garbage_gguf):
    """A stack of its own (scraped every second), two deployments serving, one FAILED, and
    Prometheus on the config berth wrote."""
    home = tmp_path_factory.mktemp("metrics-home")
    stack = RunningStack(home, extra_env={"BERTH_PROMETHEUS_SCRAPE_INTERVAL": "1s"}).start()
    prometheus = None
    try:
        config = home / "prometheus" / "prometheus.yml"
        assert f"prometheus --config.file={config}" in "".join(stack.output)
        with stack.api() as api:
            for name in ("obs-a", "obs-b"):
                assert api.post("/v1/deployments", json={"name": name, "model": str(tiny_gguf)}).status_code == 202
            api.post("/v1/deployments", json={"name": "obs-broken", "model": str(garbage_gguf)})
            for name in ("obs-a", "obs-b"):
                wait_for_api_status(api, name, {"DEPLOYED"}, timeout_s=90)
            wait_for_api_status(api, "obs-broken", {"FAILED"}, timeout_s=90)
        prometheus = RunningPrometheus(config, tmp_path_factory.mktemp("prometheus")).start()
        yield stack, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        code, leftovers = stack.stop_and_reap()
        assert code == 0 and not leftovers


def test_every_target_is_up(observed):
    stack, prometheus = observed

    def all_up():
        targets = prometheus.targets()
        jobs = {t["labels"]["job"] for t in targets}
        engines = [t for t in targets if t["labels"]["job"] == "engines"]
        return jobs == JOBS and len(engines) == 2 and all(t["health"] == "up" for t in targets) and targets

    targets = prometheus.wait_for("every target up", all_up)
    assert {t["labels"]["deployment"] for t in targets if t["labels"]["job"] == "engines"} == {"obs-a", "obs-b"}


def test_deployed_ones_are_counted(observed):
    _, prometheus = observed
    prometheus.wait_for(
        'berth_deployments{status="DEPLOYED"} == 2',
        lambda: prometheus.value('sum(berth_deployments{status="DEPLOYED"})') == 2,
    )
    assert prometheus.value('sum(berth_deployments{status="FAILED"})') == 1
    assert prometheus.value('sum(berth_deployments{status="DEPLOYED", engine="llamacpp"})') == 2
    # the worker's histogram of the time to DEPLOYED saw both
    assert prometheus.wait_for(
        "berth_time_to_deployed_seconds_count",
        lambda: (prometheus.value('sum(berth_time_to_deployed_seconds_count{engine="llamacpp"})') or 0) >= 2,
    )


def test_requests_through_the_gateway_are_counted_per_deployment(observed):
    stack, prometheus = observed
    counter = 'sum(traefik_service_requests_total{service="berth-obs-a@file", code="200"})'
    before = prometheus.value(counter) or 0
    for _ in range(3):
        assert stack.chat("obs-a").status_code == 200
    prometheus.wait_for(f"{counter} >= {before + 3}", lambda: (prometheus.value(counter) or 0) >= before + 3)
    assert prometheus.query('traefik_service_request_duration_seconds_bucket{service="berth-obs-a@file"}')


def test_the_engines_own_metrics_carry_the_deployment(observed):
    stack, prometheus = observed
    assert stack.chat("obs-b").status_code == 200
    series = prometheus.wait_for(
        "llama.cpp's tokens for obs-b",
        lambda: prometheus.query('llamacpp:tokens_predicted_total{deployment="obs-b"}'),
    )
    labels = series[0]["metric"]
    assert labels["engine"] == "llamacpp" and labels["node"] == "test-node"
    assert labels["instance"].startswith("obs-b-")


def test_a_killed_engine_counts_a_restart_with_its_code(observed):
    stack, prometheus = observed
    restarts = 'sum(berth_restarts_total{code="CONTAINER_EXITED"})'
    before = prometheus.value(restarts) or 0
    engine = engine_processes(stack.home, "obs-a")[-1]
    os.kill(engine.pid, signal.SIGKILL)
    prometheus.wait_for(f"{restarts} > {before}", lambda: (prometheus.value(restarts) or 0) >= before + 1)
    assert (prometheus.value('sum(berth_failures_total{code="CONTAINER_EXITED"})') or 0) >= 1
    assert prometheus.wait_for("the crash's detection time", lambda: prometheus.value("sum(berth_crash_detect_seconds_count)"))
    with stack.api() as api:
        wait_for_api_status(api, "obs-a", {"DEPLOYED"}, timeout_s=60)


def test_the_dashboard_names_only_metrics_that_exist(observed):
    stack, prometheus = observed
    dashboard = json.loads(DASHBOARD.read_text())
    wanted = {"berth_routes", "berth_instances"} | ({m.name for m in CLUSTER_METRICS} - CLUSTER_ONLY)
    live = prometheus.wait_for(
        "the engines' and berth's series", lambda: (names := prometheus.metric_names()) >= wanted and names
    )
    assert dashboard["panels"]
    unseen_cluster_only = set()
    for panel in dashboard["panels"]:
        exprs = [target["expr"] for target in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            named = set(re.findall(r"\b(?:berth_|traefik_|temporal_|llamacpp:)[a-zA-Z0-9_:]+", expr))
            named |= {"up"} & set(re.findall(r"\b\w+\b", expr))
            assert named, f"{panel['title']}: {expr} names no metric"
            unseen_cluster_only |= (named - live) & CLUSTER_ONLY
            assert named - CLUSTER_ONLY <= live, f"{panel['title']}: {sorted(named - live)} not exported"
            assert prometheus._api("query", query=expr) is not None  # the expression parses
    if not HAS_CLUSTER_WORKFLOW:  # the allowance covers the node panels and nothing else
        assert unseen_cluster_only == CLUSTER_ONLY, sorted(CLUSTER_ONLY - unseen_cluster_only)


def test_the_node_metrics_come_from_the_cluster_workflow(observed):
    """With the cluster workflow (berth up starts it and joins its node): the node's capacity and
    status at the API's /metrics; this node's engines by status at the worker's."""
    stack, prometheus = observed
    serving = 'sum(berth_instances{node="test-node", status="DEPLOYED"})'
    prometheus.wait_for(f"{serving} >= 2", lambda: (prometheus.value(serving) or 0) >= 2)
    if not HAS_CLUSTER_WORKFLOW:
        with stack.api() as api:
            text = api.get("/metrics").text
        assert "berth_node_" not in text  # no cluster workflow: left out, and the scrape is still 200
        pytest.skip("no cluster workflow in this tree (berth.workflows.cluster): the node metrics are absent, as they must be")
    ready = 'berth_node_status{node="test-node", status="READY"}'
    prometheus.wait_for(f"{ready} == 1", lambda: prometheus.value(ready) == 1)
    assert (prometheus.value('berth_node_capacity_bytes{node="test-node"}') or 0) > 0
    # what the cluster workflow holds, as its own query answers it
    with stack.api() as api:
        text = api.get("/metrics").text
    view = asyncio.run(_cluster_view(stack))
    node = next(n for n in view.nodes if n.facts.node_id == "test-node")
    assert f'berth_node_capacity_bytes{{node="test-node"}} {node.facts.capacity_bytes}' in text
    assert f'berth_node_instances{{node="test-node"}} {len(node.instances)}' in text
    assert f'berth_node_reserved_bytes{{node="test-node"}} {node.reserved_bytes}' in text


async def _cluster_view(stack):
    from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODES_QUERY, ClusterView

    client = await stack.client()
    return await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).query(NODES_QUERY, result_type=ClusterView)


def test_temporal_metadata_shows_a_failed_deployment(observed):
    stack, _ = observed
    out = subprocess.run(
        [temporal_binary(), "workflow", "metadata", "-w", "deployment-obs-broken",
         "--address", stack.settings.temporal_address],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "**FAILED** · llama.cpp" in text  # the current details, set at the transition
    assert "error `MODEL_LOADING_FAILURE`" in text and "what to do: The engine could not load the model" in text
    assert "| obs-broken-" in text and "| test-node | FAILED |" in text  # the instances
    described = subprocess.run(
        [temporal_binary(), "workflow", "describe", "-w", "deployment-obs-broken",
         "--address", stack.settings.temporal_address],
        capture_output=True, text=True, timeout=60,
    ).stdout
    assert "garbage.gguf on the engine berth chooses" in described  # the static summary: model, engine


def test_metrics_needs_the_token(observed):
    stack, _ = observed
    with stack.api(token="wrong") as api:
        assert api.get("/metrics").status_code == 401
    with stack.api() as api:
        answer = api.get("/metrics")
        key = api.post("/v1/keys", json={"deployments": ["obs-a"]}).json()["key"]
    with stack.api(token=key) as api:  # an inference key opens model endpoints only
        assert api.get("/metrics").status_code == 403
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'berth_deployments{status="FAILED",engine="llamacpp"} 1' in answer.text


@pytest.mark.skipif(not HAS_CLUSTER_WORKFLOW, reason="no cluster workflow in this tree (berth.workflows.cluster)")
def test_a_drain_from_the_console_shows_in_the_node_status(observed):
    """The console's Drain and Undrain (the cluster workflow's updates) on the stack's one node, seen
    by Prometheus in berth_node_status and by the console's own table."""
    import httpx

    from berth.api.console import session as sessions

    stack, prometheus = observed
    token = stack.api_token()
    with httpx.Client(base_url=stack.api_url, timeout=30) as console:
        assert console.post("/ui/login", data={"token": token}).status_code == 303
        csrf = sessions.csrf_token(token, console.cookies.get(sessions.COOKIE))
        own = {"X-Berth-CSRF": csrf, "Sec-Fetch-Site": "same-origin"}
        status = 'berth_node_status{node="test-node", status="%s"}'
        try:
            drained = console.post("/ui/api/nodes/test-node/drain", json={}, headers=own)
            assert drained.status_code == 200 and drained.json()["status"] == "DRAINING", drained.text
            prometheus.wait_for("DRAINING", lambda: prometheus.value(status % "DRAINING") == 1)
            assert prometheus.value(status % "READY") == 0
            assert "Undrain" in console.get("/ui/api/nodes").json()["html"]
        finally:
            undrained = console.post("/ui/api/nodes/test-node/undrain", json={}, headers=own)
        assert undrained.status_code == 200 and undrained.json()["status"] == "READY", undrained.text
        prometheus.wait_for("READY again", lambda: prometheus.value(status % "READY") == 1)
        unknown = console.post("/ui/api/nodes/node-z/drain", json={}, headers=own)
        assert unknown.status_code == 404 and "test-node" in unknown.json()["error"]["message"]
