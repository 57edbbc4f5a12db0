"""The node's own metrics (berth.domain.metric_names): recorded through the Temporal SDK meter the
worker installs at start (its Runtime exports them at BERTH_WORKER_METRICS_PORT with the SDK's).
Where no meter was installed (the API, a test calling node code directly) recording does nothing.
Recording never raises: a metric is not worth failing an activity for."""

import logging
from typing import Any

from temporalio.common import MetricMeter

from berth.domain.metric_names import MetricName

log = logging.getLogger(__name__)
_meter: MetricMeter | None = None
_instruments: dict[str, Any] = {}


def install(meter: MetricMeter | None) -> None:
    global _meter
    _meter = meter
    _instruments.clear()


def _instrument(metric: MetricName) -> Any:
    if _meter is None:
        return None
    instrument = _instruments.get(metric.name)
    if instrument is None:
        if metric.kind == "counter":
            instrument = _meter.create_counter(metric.sdk_name, metric.help)
        elif metric.kind == "histogram":
            instrument = _meter.create_histogram_float(metric.sdk_name, metric.help)
        else:
            instrument = _meter.create_gauge(metric.sdk_name, metric.help)
        _instruments[metric.name] = instrument
    return instrument


def record(metric: MetricName, value: float, **labels: str) -> None:
    """Add to a counter, observe a histogram's value, or set a gauge."""
    instrument = _instrument(metric)
    if instrument is None:
        return
    try:
        if metric.kind == "counter":
            instrument.add(int(value), labels)
        elif metric.kind == "histogram":
            instrument.record(float(value), labels)
        else:
            instrument.set(int(value), labels)
    except Exception:  # noqa: BLE001 - see the module's docstring
        log.exception("recording %s failed", metric.name)
