"""The worker's Temporal Runtime with a Prometheus exporter at 127.0.0.1:BERTH_WORKER_METRICS_PORT:
the SDK's own metrics (`temporal_*`: task latencies, pollers, activity and workflow outcomes) and
berth's (berth.domain.metric_names: recorded by the workflow through `workflow.metric_meter()`, never
during replay, and by the node through berth.node.metrics). Port 0: no exporter."""

import logging

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from berth.domain.metric_names import BUCKETS
from berth.node import metrics
from berth.settings import Settings

log = logging.getLogger(__name__)
METRICS_HOST = "127.0.0.1"


def metrics_address(settings: Settings) -> str:
    return f"{METRICS_HOST}:{settings.worker_metrics_port}"


def worker_runtime(settings: Settings) -> Runtime | None:
    """The Runtime to connect with, its meter installed for the node's metrics; None (the SDK's
    default Runtime, no exporter) with the port 0, or when the port cannot be bound: the worker
    serves without metrics rather than not at all, and says so in its log."""
    if not settings.worker_metrics_port:
        return None
    config = PrometheusConfig(
        bind_address=metrics_address(settings),
        counters_total_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides=BUCKETS,
    )
    try:
        runtime = Runtime(telemetry=TelemetryConfig(metrics=config))
    except Exception as error:  # noqa: BLE001 - e.g. the port is taken
        log.error("no metrics: the exporter at %s did not start (%s)", metrics_address(settings), error)
        return None
    metrics.install(runtime.metric_meter)
    return runtime
