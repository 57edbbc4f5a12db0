"""What every engine tells berth: what it serves, how to launch it, and how to tell loading from ready."""

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

import httpx

from berth.domain.diagnostics import LogPattern
from berth.domain.pipeline import LaunchRequest


class Readiness(str, Enum):
    STARTING = "STARTING"  # nothing answers on the port yet
    LOADING = "LOADING"  # the server answers, the model is not loaded yet
    READY = "READY"
    UNHEALTHY = "UNHEALTHY"  # it answered, and the answer says it is broken


@dataclass(frozen=True)
class LaunchCommand:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


# Where an engine runs: a native process on the node, or a Docker container.
Runtime = Literal["process", "container"]


@dataclass(frozen=True)
class DeviceRequest:
    """GPUs for a container, as the Docker API's HostConfig.DeviceRequests entry says them."""

    count: int = -1  # -1: all GPUs; 0 when device_ids name them
    device_ids: tuple[str, ...] = ()
    capabilities: tuple[tuple[str, ...], ...] = (("gpu",),)
    driver: str = ""


@dataclass(frozen=True)
class ContainerSpec:
    """The container to run for one launch: what the container runtime hands to Docker."""

    image: str
    command: list[str]  # the arguments after the image's entrypoint
    name: str
    environment: dict[str, str] = field(default_factory=dict)
    device_requests: tuple[DeviceRequest, ...] = ()
    ports: dict[str, tuple[str, int]] = field(default_factory=dict)  # "8000/tcp" -> (host ip, host port)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)  # host path -> {"bind", "mode"}
    labels: dict[str, str] = field(default_factory=dict)
    ipc_mode: str | None = None


class HttpProbe(Protocol):
    """What an engine's probe asks through: berth.node.probe_transport.ProbeClient in the
    worker (an httpx.AsyncClient answers the same calls). Answers have `status_code`; failures raise
    httpx's exceptions (ConnectError, ReadError, RemoteProtocolError, TimeoutException...)."""

    async def get(self, url: str) -> Any: ...

    async def post(self, url: str, json: Any = None) -> Any: ...


class Engine(ABC):
    """One inference engine. Subclasses live one per file in this package."""

    name: str
    formats: frozenset[str]  # model formats it serves: "gguf", "safetensors"
    health_path: str = "/health"  # what berth's probes ask (await_ready, supervise)
    # where the engine serves Prometheus metrics on its port (None: it does not); the node lists it
    # for Prometheus while it serves (berth.node.engine_targets)
    metrics_path: str | None = None
    # the series at metrics_path that count the requests the engine is working on or holds queued
    # (summed): what a drain waits on (berth.node.drain); none: the engine cannot say
    in_flight_series: tuple[str, ...] = ()
    log_patterns: tuple[LogPattern, ...] = ()  # failure lines only this engine prints

    @abstractmethod
    def command(self, request: LaunchRequest) -> LaunchCommand:
        """The process to start (argv and extra environment) for this request."""

    def runtime(self) -> Runtime:
        """Where this engine runs on this node; "container" engines also define container_request."""
        return "process"

    def container_request(self, request: LaunchRequest) -> ContainerSpec:
        """The container to run for this request (engines whose runtime() is "container")."""
        raise NotImplementedError(f"engine {self.name!r} does not run in a container")

    async def probe(self, client: HttpProbe, base_url: str, after_ready: bool = False) -> Readiness:
        """One look at the engine's health endpoint. `after_ready`: supervise asks about an engine
        that was ready before, so an engine whose readiness check is costly may answer from a
        cheaper liveness check."""
        try:
            response = await client.get(base_url + self.health_path)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            return Readiness.STARTING
        except httpx.TimeoutException:
            return Readiness.LOADING
        if response.status_code == 200:
            return Readiness.READY
        if response.status_code == 503:
            return Readiness.LOADING
        return Readiness.UNHEALTHY

    async def in_flight(self, client: HttpProbe, base_url: str) -> int | None:
        """Requests the engine is working on or holds queued, from its own metrics; None when it
        cannot say (no such series, an answer that is not 200). A connection error is raised: the
        caller tells a gone engine from a busy one."""
        if not self.metrics_path or not self.in_flight_series:
            return None
        response = await client.get(base_url + self.metrics_path)
        if response.status_code != 200:
            return None
        return in_flight_from_metrics(response.content.decode("utf-8", "replace"), self.in_flight_series)


# a sample line of Prometheus' text format: name, optional labels (no "}" inside a label value is
# assumed: engines' labels are model names and numbers), value
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)")


def in_flight_from_metrics(text: str, series: tuple[str, ...]) -> int | None:
    """The sum of these gauges over every label set in a Prometheus text answer; None when none of
    them is there."""
    total, seen = 0.0, False
    for line in text.splitlines():
        sample = _SAMPLE.match(line)
        if sample is None or sample.group(1) not in series:
            continue
        try:
            total += float(sample.group(2))
        except ValueError:
            continue
        seen = True
    return round(total) if seen else None


def engine_threads() -> int:
    """Threads for a CPU engine: leave one core for everything else (measured: 2 threads on 2 busy
    cores fell to ~1 tok/s, 1 thread gave ~43 tok/s)."""
    return max(1, (os.cpu_count() or 2) - 1)


# Labels that tie a container to its instance and deployment: the container runtime finds a
# container by INSTANCE_LABEL (so a retried launch finds the one it made).
INSTANCE_LABEL = "berth.instance"
DEPLOYMENT_LABEL = "berth.deployment"
MANAGED_LABEL = "berth.managed"


def instance_labels(request: LaunchRequest) -> dict[str, str]:
    return {
        INSTANCE_LABEL: request.instance_id,
        DEPLOYMENT_LABEL: request.deployment,
        MANAGED_LABEL: "true",
        "berth.engine": request.engine,
    }


def container_name(instance_id: str) -> str:
    """Docker names allow [a-zA-Z0-9][a-zA-Z0-9_.-]*; instance ids are '<dns label>-<hex>'."""
    return f"berth-{instance_id}"
