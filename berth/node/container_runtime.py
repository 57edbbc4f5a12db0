"""Engines as Docker containers: create, find, watch and stop them through the Docker SDK, from any
worker on the node.

A container is found by its `berth.instance` label, never by a remembered id alone, so a launch
retried after the worker died between creating the container and recording it finds that
container (and adopts it while it runs the same image and arguments) instead of making another.
Containers are not auto-removed: after an exit, Docker still holds the exit code, State.OOMKilled
and the output, which is what classifying the failure needs. Stopping removes the container
after copying its output into the deployment's log file.

The Docker SDK (and requests under it, ~14 MB) is imported at first use: a worker on a node
without Docker never loads it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from berth.engines.base import INSTANCE_LABEL, ContainerSpec
from berth.node.logs import open_log

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

API_TIMEOUT_S = 30


class DockerUnavailable(RuntimeError):
    """No Docker engine answers where DOCKER_HOST (or the default socket) points."""


@functools.cache
def sdk() -> ModuleType:
    """The docker package, with its errors and types (e.g. `sdk().errors.ImageNotFound`)."""
    import docker
    import docker.errors
    import docker.types

    return docker


def client() -> docker.DockerClient:
    """One client per DOCKER_HOST for the life of the process."""
    return _client(os.environ.get("DOCKER_HOST", ""))


@functools.lru_cache(maxsize=4)
def _client(host: str) -> docker.DockerClient:
    try:
        return sdk().from_env(timeout=API_TIMEOUT_S)
    except sdk().errors.DockerException as error:
        where = host or "unix:///var/run/docker.sock"
        raise DockerUnavailable(f"no Docker engine answers at {where}: {error}") from None


@contextlib.contextmanager
def _answering():
    """A Docker engine that stopped answering after the client was made is DockerUnavailable too."""
    sdk()
    import requests  # loaded with the SDK

    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise DockerUnavailable(f"the Docker engine at {where} does not answer: {error}") from None


def docker_configured() -> bool:
    """Whether a Docker engine may be there at all (cheap: no request)."""
    return bool(os.environ.get("DOCKER_HOST")) or Path("/var/run/docker.sock").exists()


@dataclass(frozen=True)
class StartedContainer:
    id: str
    name: str
    pid: int  # the container's main process, as the host sees it
    adopted: bool  # found running from an earlier try of the same launch, not created now


@dataclass(frozen=True)
class ContainerExit:
    exit_code: int | None  # None: the container is gone, so is its exit code
    oom_killed: bool
    error: str = ""  # Docker's own error (State.Error), e.g. a failed start


def create_arguments(spec: ContainerSpec) -> dict:
    """The keyword arguments for `containers.create`: the whole container request."""
    return dict(
        image=spec.image,
        command=list(spec.command),
        name=spec.name,
        environment=dict(spec.environment),
        device_requests=[
            sdk().types.DeviceRequest(
                driver=request.driver,
                count=0 if request.device_ids else request.count,
                device_ids=list(request.device_ids),
                capabilities=[list(group) for group in request.capabilities],
            )
            for request in spec.device_requests
        ],
        ports=dict(spec.ports),
        volumes={host: dict(bind) for host, bind in spec.volumes.items()},
        labels=dict(spec.labels),
        ipc_mode=spec.ipc_mode,
        detach=True,
    )


def find(instance_id: str) -> list[Container]:
    """Every container made for this instance, running or not."""
    with _answering():
        return client().containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={instance_id}"})


def _runs(container: Container, spec: ContainerSpec) -> bool:
    """Whether this running container is the one the spec asks for (same image, same arguments)."""
    config = container.attrs.get("Config") or {}
    return (
        container.status == "running"
        and config.get("Image") == spec.image
        and list(config.get("Cmd") or []) == list(spec.command)
    )


def launch(spec: ContainerSpec) -> StartedContainer:
    """Start the container for the spec's instance, or adopt the one an earlier try started."""
    instance_id = spec.labels.get(INSTANCE_LABEL)
    if not instance_id:
        raise ValueError(f"container spec {spec.name!r} has no {INSTANCE_LABEL} label")
    existing = find(instance_id)
    for container in existing:
        if _runs(container, spec):
            return StartedContainer(container.id, container.name, _pid(container), adopted=True)
    for container in existing:  # leftovers: exited, never started, or made for other arguments
        _remove(container, grace_s=2.0)
    for host, bind in spec.volumes.items():
        if bind.get("mode", "rw") == "rw":
            Path(host).mkdir(parents=True, exist_ok=True)  # else Docker makes it, owned by root
    with _answering():
        container = client().containers.create(**create_arguments(spec))
        try:
            container.start()
        except sdk().errors.DockerException:
            _remove(container, grace_s=0)
            raise
        container.reload()
    return StartedContainer(container.id, container.name, _pid(container), adopted=False)


def _pid(container: Container) -> int:
    return int((container.attrs.get("State") or {}).get("Pid") or 0)


def _get(container_id: str) -> Container | None:
    try:
        with _answering():
            return client().containers.get(container_id)
    except sdk().errors.NotFound:
        return None


def is_alive(container_id: str) -> bool:
    container = _get(container_id)
    return container is not None and container.status in ("running", "restarting")


def exit_status(container_id: str) -> ContainerExit:
    container = _get(container_id)
    if container is None:
        return ContainerExit(exit_code=None, oom_killed=False)
    state = container.attrs.get("State") or {}
    return ContainerExit(
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        error=state.get("Error") or "",
    )


def log_lines(container_id: str, max_lines: int = 200) -> list[str] | None:
    """The container's last lines (stdout and stderr), or None when the container is gone."""
    container = _get(container_id)
    if container is None:
        return None
    try:
        with _answering():
            return _decode(container.logs(stdout=True, stderr=True, tail=max_lines))
    except sdk().errors.NotFound:
        return None


def _decode(output: bytes) -> list[str]:
    return output.decode("utf-8", "replace").splitlines()


def _remove(container: Container, grace_s: float, log_path: Path | None = None) -> None:
    with _answering(), contextlib.suppress(sdk().errors.NotFound):
        if container.status in ("running", "restarting", "paused"):
            container.stop(timeout=max(0, round(grace_s)))
        if log_path is not None:
            output = container.logs(stdout=True, stderr=True)
            if output:
                with open_log(log_path) as log:
                    log.write(output if output.endswith(b"\n") else output + b"\n")
        container.remove(force=True)


def stop(instance_id: str, grace_s: float = 10.0, log_path: Path | None = None) -> int:
    """Stop and remove every container of this instance, keeping their output in log_path.
    Idempotent; returns how many there were."""
    containers = find(instance_id)
    for container in containers:
        _remove(container, grace_s, log_path)
    return len(containers)
