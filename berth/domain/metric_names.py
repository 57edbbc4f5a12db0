"""The names of berth's own metrics, what each means, and the histograms' buckets: one list that the
workflow (state_keeper), the node (berth.node.metrics), the worker's exporter, the API's /metrics,
the dashboard test and docs/observability.md agree on. Pure data.

The worker's metrics go out through the Temporal SDK's Prometheus exporter, which adds `_total` to
a counter's name and `_bucket`/`_sum`/`_count` to a histogram's: the names here are the exported
ones, and `sdk_name` gives the one an instrument is created with.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricName:
    name: str  # as Prometheus shows it
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()

    @property
    def sdk_name(self) -> str:
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


# ---- the API's /metrics (from Temporal's visibility store, at each scrape) ------------------------
DEPLOYMENTS = MetricName(
    "berth_deployments", "gauge", "running deployments by status and engine (visibility counts)", ("status", "engine")
)
COUNTS_SECONDS = MetricName(
    "berth_metrics_counts_seconds", "gauge", "how long the last round of visibility counts took", ()
)
COUNTS_AGE = MetricName(
    "berth_metrics_counts_age_seconds", "gauge", "how old the counts in berth_deployments are", ()
)
# ---- the API's /metrics (from the cluster workflow's `nodes` query, one per scrape at most) --------
NODE_CAPACITY = MetricName(
    "berth_node_capacity_bytes", "gauge", "memory berth's engines may use on the node (its budget)", ("node",)
)
NODE_RESERVED = MetricName(
    "berth_node_reserved_bytes", "gauge", "memory reserved on the node by the instances placed there", ("node",)
)
NODE_STATUS = MetricName(
    "berth_node_status", "gauge", "1 for the node's status (READY, NOT_READY, DRAINING, DOWN), 0 for the others",
    ("node", "status"),
)
NODE_INSTANCES = MetricName(
    "berth_node_instances", "gauge", "instances placed on the node (a reservation each, whatever their status)",
    ("node",),
)

# ---- the worker's (the SDK's exporter, at BERTH_WORKER_METRICS_PORT) -----------------------------
# recorded by the deployment workflow, at its transitions (never during replay)
FAILURES = MetricName(
    "berth_failures_total", "counter", "failures of a deployment's engine or pipeline, by error code", ("code", "engine")
)
RESTARTS = MetricName(
    "berth_restarts_total", "counter", "automatic restarts (a failure that led to ERROR), by error code", ("code", "engine")
)
TIME_TO_DEPLOYED = MetricName(
    "berth_time_to_deployed_seconds",
    "histogram",
    "from the request (or the restart, or the retry) to DEPLOYED",
    ("engine",),
)
# recorded by the node
CRASH_DETECT = MetricName(
    "berth_crash_detect_seconds",
    "histogram",
    "from an engine process's exit to supervise reporting it",
    ("node", "engine"),
)
DOWNLOAD_BYTES = MetricName("berth_download_bytes_total", "counter", "bytes of model files downloaded", ("node",))
DOWNLOAD_SECONDS = MetricName(
    "berth_download_seconds", "histogram", "how long each model download took (sum: seconds spent)", ("node",)
)
ROUTES = MetricName("berth_routes", "gauge", "routes in this node's gateway route table", ("node",))
INSTANCES = MetricName(
    "berth_instances",
    "gauge",
    "engines this node runs, by instance status (STARTING: launched, not yet watched; DEPLOYED: "
    "served and watched by supervise; ERROR: exited, the workflow not done with it yet)",
    ("node", "status"),
)

WORKER_METRICS = (
    FAILURES, RESTARTS, TIME_TO_DEPLOYED, CRASH_DETECT, DOWNLOAD_BYTES, DOWNLOAD_SECONDS, ROUTES, INSTANCES
)
API_METRICS = (DEPLOYMENTS, COUNTS_SECONDS, COUNTS_AGE, NODE_CAPACITY, NODE_RESERVED, NODE_STATUS, NODE_INSTANCES)
# the API's metrics that exist only while the cluster workflow answers its `nodes` query
CLUSTER_METRICS = (NODE_CAPACITY, NODE_RESERVED, NODE_STATUS, NODE_INSTANCES)

# histogram buckets (seconds), given to the exporter by name
BUCKETS: dict[str, list[float]] = {
    TIME_TO_DEPLOYED.name: [0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600],
    CRASH_DETECT.name: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    DOWNLOAD_SECONDS.name: [1, 5, 15, 60, 300, 900, 3600, 10800],
}
