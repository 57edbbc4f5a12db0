"""The pieces of observability that need no stack: the Temporal UI's texts, prometheus.yml, the
engines' targets files, Traefik's metrics entry point, Temporal's metrics port, the metric names."""

import asyncio
import json
import re
import stat
from datetime import datetime, timezone

import pytest
import yaml

from berth.domain.errors import ErrorCode
from berth.domain.metric_names import API_METRICS, BUCKETS, WORKER_METRICS
from berth.domain.spec import DeploymentSpec
from berth.domain.state import DeploymentError, DeploymentState, InstanceState, Transition
from berth.domain.status import DeploymentStatus, InstanceStatus
from berth.domain.ui_details import current_details, launch_summary, static_details, static_summary, step_summary
from berth.node.engine_targets import listed, prune_targets, remove_target, write_target
from berth.settings import Settings
from berth.worker.gateway import static_config
from berth.worker.prometheus_config import write_prometheus_config
from berth.worker.temporal_server import temporal_argv

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def settings(tmp_path, **env) -> Settings:
    return Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_NODE_ID": "node-a", **env})


@pytest.mark.parametrize(
    "engine, summary",
    [
        (None, "org/model.gguf on the engine berth chooses"),
        ("auto", "org/model.gguf on the engine berth chooses"),
        ("llamacpp", "org/model.gguf on llama.cpp"),
        ("vllm", "org/model.gguf on vLLM"),
    ],
)
def test_static_summary_names_model_and_engine(engine, summary):
    spec = DeploymentSpec(name="d", model="org/model.gguf", **({"engine": engine} if engine else {}))
    assert static_summary(spec) == summary
    assert "| model | org/model.gguf |" in static_details(spec)


def state(status, error=None, **extra) -> DeploymentState:
    return DeploymentState(
        spec=DeploymentSpec(name="d", model="m.gguf"),
        status=status,
        engine="llamacpp",
        instances=[InstanceState(instance_id="d-1", node="node-a", status=InstanceStatus.DEPLOYED, port=20001)],
        transitions=[Transition(at=AT, status=status, detail="why")],
        error=error,
        **extra,
    )


@pytest.mark.parametrize(
    "deployment, present, absent",
    [
        (
            state(DeploymentStatus.DEPLOYED, endpoint="http://g/models/d/v1"),
            ["**DEPLOYED** · llama.cpp", "endpoint: `http://g/models/d/v1`", "| d-1 | node-a | DEPLOYED | 20001 |",
             "since 2026-01-02 03:04:05 UTC: why"],
            ["error"],
        ),
        (
            state(
                DeploymentStatus.FAILED,
                DeploymentError(code=ErrorCode.OOM, message="a|b\nc", guidance="use less", at=AT),
            ),
            ["**FAILED**", "**error `OOM`**: a|b\nc", "what to do: use less"],
            ["endpoint"],
        ),
        (
            state(DeploymentStatus.ERROR, next_retry_at=AT, attempts=2),
            ["next automatic retry at 03:04:05 UTC (attempt 2)"],
            [],
        ),
    ],
)
def test_current_details(deployment, present, absent):
    text = current_details(deployment)
    for part in present:
        assert part in text
    for part in absent:
        assert part not in text


def test_current_details_stay_small_with_a_long_error():
    error = DeploymentError(code=ErrorCode.RUNTIME_ERROR, message="x" * 100_000, guidance="g" * 100_000, at=AT)
    assert len(current_details(state(DeploymentStatus.FAILED, error))) <= 4000


def test_activity_summaries():
    assert launch_summary("llamacpp", "node-a", 20001) == "launch llama.cpp on node-a, port 20001"
    assert step_summary("allocate a port", "node-a") == "allocate a port on node-a"


def test_prometheus_config_has_every_job_and_a_private_token(tmp_path):
    s = settings(tmp_path, BERTH_API_PORT="8100", BERTH_WORKER_METRICS_PORT="9500")
    path = write_prometheus_config(s)
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"berth-api", "berth-worker", "gateway", "temporal", "engines"}
    api = jobs["berth-api"]
    assert api["static_configs"][0]["targets"] == ["127.0.0.1:8100"]
    token_file = api["authorization"]["credentials_file"]
    assert stat.S_IMODE((tmp_path / "prometheus" / "api-token").stat().st_mode) == 0o600
    assert open(token_file).read().strip() == (tmp_path / "api-token").read_text().strip()
    assert jobs["berth-worker"]["static_configs"][0]["targets"] == ["127.0.0.1:9500"]
    assert jobs["engines"]["file_sd_configs"][0]["files"] == [str(tmp_path / "prometheus" / "engines" / "*.json")]


def test_a_metrics_port_of_0_leaves_its_job_out(tmp_path):
    s = settings(tmp_path, BERTH_TEMPORAL_METRICS_PORT="0", BERTH_GATEWAY_METRICS_PORT="0")
    jobs = {job["job_name"] for job in yaml.safe_load(write_prometheus_config(s).read_text())["scrape_configs"]}
    assert jobs == {"berth-api", "berth-worker", "engines"}
    assert "--metrics-port" not in temporal_argv(s)
    assert "metrics" not in static_config(s)


@pytest.mark.parametrize("interval, ok", [("1s", True), ("500ms", True), ("2m", True), ("0s", False), ("fast", False),
                                          ("1s\nscrape_configs: []", False)])
def test_scrape_interval_is_checked(tmp_path, monkeypatch, interval, ok):
    monkeypatch.setenv("BERTH_PROMETHEUS_SCRAPE_INTERVAL", interval)
    if ok:
        config = yaml.safe_load(write_prometheus_config(settings(tmp_path)).read_text())
        assert config["global"]["scrape_interval"] == interval
    else:
        with pytest.raises(SystemExit, match="BERTH_PROMETHEUS_SCRAPE_INTERVAL"):
            write_prometheus_config(settings(tmp_path))


def test_gateway_and_temporal_metrics_ports(tmp_path):
    s = settings(tmp_path, BERTH_GATEWAY_METRICS_PORT="8182", BERTH_TEMPORAL_METRICS_PORT="7335")
    config = static_config(s)
    assert config["entryPoints"]["metrics"] == {"address": "127.0.0.1:8182"}
    assert config["metrics"]["prometheus"]["entryPoint"] == "metrics"
    argv = temporal_argv(s)
    assert argv[argv.index("--metrics-port") + 1] == "7335"


def test_engine_targets_are_written_removed_and_pruned(tmp_path):
    write_target(tmp_path, "d", "d-1", "node-a", "llamacpp", 20001)
    write_target(tmp_path, "e", "e-1", "node-a", "vllm", 20002)
    targets = json.loads((tmp_path / "prometheus" / "engines" / "d-1.json").read_text())
    assert targets == [
        {"targets": ["127.0.0.1:20001"],
         "labels": {"deployment": "d", "instance": "d-1", "node": "node-a", "engine": "llamacpp"}}
    ]
    assert listed(tmp_path) == {"d-1", "e-1"}
    assert prune_targets(tmp_path, {"d-1"}) == ["e-1"]
    remove_target(tmp_path, "d-1")
    remove_target(tmp_path, "d-1")  # idempotent
    assert listed(tmp_path) == set()


def test_metric_names_are_prometheus_names():
    for metric in (*WORKER_METRICS, *API_METRICS):
        assert metric.name.startswith("berth_") and metric.kind in ("counter", "histogram", "gauge")
        assert (metric.kind == "counter") == metric.name.endswith("_total")
    for name, buckets in BUCKETS.items():
        assert buckets == sorted(buckets) and name.endswith("_seconds")


@pytest.fixture
def worker_meter(tmp_path, monkeypatch):
    """The worker's real Runtime and exporter, on a free port; the node's meter installed."""
    from berth.node import metrics
    from berth.testing.harness import free_port
    from berth.worker.metrics_runtime import worker_runtime

    port = free_port()
    monkeypatch.setenv("BERTH_NODE_ID", "node-a")
    runtime = worker_runtime(settings(tmp_path, BERTH_WORKER_METRICS_PORT=str(port)))
    assert runtime is not None
    yield f"http://127.0.0.1:{port}/metrics"
    metrics.install(None)


def scrape(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=5).text


async def test_a_download_counts_its_bytes_and_time(worker_meter):
    from berth.domain.state import DownloadProgress
    from berth.node.download_progress import ProgressReporter

    reporter = ProgressReporter()

    async def download():
        reporter(DownloadProgress(source="hf:o/r", bytes_done=1500, bytes_total=5000, resumed_from=500))
        reporter(DownloadProgress(source="hf:o/r", bytes_done=5000, bytes_total=5000, resumed_from=500))

    await reporter.run(download())
    await ProgressReporter().run(asyncio.sleep(0))  # nothing reported: the cache had it, nothing counted
    text = scrape(worker_meter)
    assert re.search(r'^berth_download_bytes_total\{node="node-a"[^}]*\} 4500$', text, re.M), text
    assert re.search(r'^berth_download_seconds_count\{node="node-a"[^}]*\} 1$', text, re.M), text


def test_a_worker_whose_metrics_port_is_taken_serves_without(tmp_path, caplog):
    import socket

    from berth.worker.metrics_runtime import worker_runtime

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert worker_runtime(settings(tmp_path, BERTH_WORKER_METRICS_PORT=str(port))) is None
    assert "no metrics" in caplog.text
    assert worker_runtime(settings(tmp_path, BERTH_WORKER_METRICS_PORT="0")) is None


def test_the_model_search_attribute_is_cut_by_bytes_at_a_character_boundary():
    from berth.domain.temporal_names import KEYWORD_LIMIT_BYTES, keyword_value

    assert keyword_value("/models/q.gguf") == "/models/q.gguf"
    long_ascii = "/m/" + "a" * 4093
    assert keyword_value(long_ascii) == long_ascii[:KEYWORD_LIMIT_BYTES]
    wide = "/models/" + "模" * 1300  # 3 bytes each: 3,908 bytes in 1,308 characters
    cut = keyword_value(wide)
    assert len(cut.encode()) <= KEYWORD_LIMIT_BYTES and wide.startswith(cut) and len(cut.encode()) > KEYWORD_LIMIT_BYTES - 3
