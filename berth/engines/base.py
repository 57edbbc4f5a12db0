"""What every engine tells berth: what it serves, how to launch it, and how to tell loading from ready."""

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum

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


class Engine(ABC):
    """One inference engine. Subclasses live one per file in this package."""

    name: str
    formats: frozenset[str]  # model formats it serves: "gguf", "safetensors"
    health_path: str = "/health"  # what the router's health check asks
    log_patterns: tuple[LogPattern, ...] = ()  # failure lines only this engine prints

    @abstractmethod
    def command(self, request: LaunchRequest) -> LaunchCommand:
        """The process to start (argv and extra environment) for this request."""

    async def probe(self, client: httpx.AsyncClient, base_url: str) -> Readiness:
        """One look at the engine's health endpoint."""
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


def engine_threads() -> int:
    """Threads for a CPU engine: leave one core for everything else (measured: 2 threads on 2 busy
    cores fell to ~1 tok/s, 1 thread gave ~43 tok/s)."""
    return max(1, (os.cpu_count() or 2) - 1)
