"""Start an engine for an instance, at most once; stop it for good (launch_engine and stop_engine).

A launch is idempotent: a retried launch finds the engine it started through the node's
engine record (or, if the worker died between spawning and recording, through the instance marker
in the process environment, and then replaces that unrecorded process; or through the container's
`berth.instance` label, and then adopts that container while it runs the same request).

Each engine says where it runs (Engine.runtime): a native process (process_runtime) or a Docker
container (container_runtime); the record remembers which, and everything after the launch
(watching, logs, stopping) follows the record.
"""

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from berth.common.sealing import SealError, is_sealed, load_key, open_env
from berth.domain.errors import ErrorCode
from berth.domain.pipeline import EngineHandle, LaunchRequest
from berth.engines.base import ContainerSpec
from berth.engines.engine_args import spec_refusal
from berth.engines.registry import get_engine
from berth.engines.vllm import UnsafeMount
from berth.node import container_runtime, process_runtime
from berth.node.engine_records import EngineRecord, EngineRecords
from berth.node.engine_targets import remove_target
from berth.node.engine_watch import record_alive
from berth.node.failures import failure_error
from berth.node.logs import log_path, open_log
from berth.settings import Settings

log = logging.getLogger(__name__)
HOME_LABEL = "berth.home"  # which node's engine a container is, like BERTH_HOME in a process's env


def handle_of(record: EngineRecord) -> EngineHandle:
    return EngineHandle(
        instance_id=record.instance_id,
        deployment=record.deployment,
        engine=record.engine,
        port=record.port,
        pid=record.pid,
        log_path=record.log_path,
        log_offset=record.log_offset,
        started_at=record.started_at,
        container_id=record.container_id,
    )


def launch(settings: Settings, request: LaunchRequest, first_attempt: bool = False, run_id: str = "") -> EngineHandle:
    """Start the engine unless this instance's engine already runs; leftovers of an earlier launch
    of it go first. `first_attempt`: launch_engine has not run before for this launch, so with no
    record there can be no leftover (a launch that died between spawning and recording is retried as
    a later attempt; stop_engine, before any relaunch, looks for unrecorded processes itself): no
    look through every process's environment (~10 µs a process here: 0.7 ms for 66; a node with 1000
    deployments runs over 2000). `run_id`: the workflow run launching it, kept in the record."""
    records = EngineRecords(settings.run_dir)
    record = records.get(request.instance_id)
    if (
        record is not None
        and not record.stopped_by_shutdown
        and record.port == request.port
        and record_alive(record)
    ):
        if run_id and record.run_id != run_id:  # launched again by a later run (continued as new)
            record = record.model_copy(update={"run_id": run_id})
            records.put(record)
        return handle_of(record)  # a retried launch: the engine is already running
    refuse_unsafe(request)
    request = with_env_opened(settings, request)
    engine = get_engine(request.engine)
    if engine.runtime() == "container":
        # process leftovers go here; container_runtime.launch adopts or replaces earlier containers
        stop_instance(records, request.instance_id, grace_s=2.0, containers=False)
        try:
            spec = engine.container_request(request)
        except UnsafeMount as unsafe:
            raise failure_error(ErrorCode.MODEL_LOADING_FAILURE, str(unsafe)) from None
        record = launch_container(settings, request, spec, run_id)
        records.put(record)
        return handle_of(record)
    stop_instance(records, request.instance_id, grace_s=2.0, unrecorded=not (first_attempt and record is None))

    command = engine.command(request)
    # which node's engine this is, for reconcile (the worker's own BERTH_HOME may be a default)
    command = replace(command, env={**command.env, "BERTH_HOME": str(settings.home)})
    path = log_path(settings.logs_dir, request.instance_id)  # one log per instance
    exit_file = records.exit_file(request.instance_id)
    started = process_runtime.start(command, request.instance_id, path, exit_file)
    record = EngineRecord(
        instance_id=request.instance_id,
        deployment=request.deployment,
        engine=request.engine,
        port=request.port,
        pid=started.pid,
        pid_create_time=started.pid_create_time,
        wrapper_pid=started.wrapper_pid,
        log_path=str(path),
        log_offset=started.log_offset,
        exit_file=str(exit_file),
        started_at=time.time(),
        run_id=run_id,
    )
    records.put(record)
    return handle_of(record)


def refuse_unsafe(request: LaunchRequest) -> None:
    """The node's own check of what the spec asks it to run (the API checked it too, but a workflow
    started from the Temporal CLI skips the API): before anything starts, under this node's
    BERTH_ALLOW_UNSAFE_ENV / BERTH_ALLOW_UNSAFE_ENGINE_ARGS. ENGINE_UNAVAILABLE: the engine cannot
    be started with this spec here, and the same spec again would not change that (FAILED)."""
    refusal = spec_refusal(request.engine, request.engine_args, request.env, os.environ)
    if refusal:
        raise failure_error(
            ErrorCode.ENGINE_UNAVAILABLE, f"this node refuses to start {request.engine} with this spec: {refusal}"
        )


def with_env_opened(settings: Settings, request: LaunchRequest) -> LaunchRequest:
    """The request with its sealed env values opened (berth.common.sealing), just before the
    engine's environment is built: the clear values live in this process's memory and the engine's
    environment only. A value that is not sealed is used as it is. One that does not open here is
    ENGINE_UNAVAILABLE (FAILED): the message names the variable and the key to give this node."""
    if not any(is_sealed(value) for value in request.env.values()):
        return request
    try:
        env = open_env(load_key(settings), request.deployment, request.env)
    except (SealError, OSError) as error:
        raise failure_error(ErrorCode.ENGINE_UNAVAILABLE, f"this node cannot open the spec's env: {error}") from None
    return request.model_copy(update={"env": env})


def launch_container(settings: Settings, request: LaunchRequest, spec: ContainerSpec, run_id: str = "") -> EngineRecord:
    spec = replace(spec, labels={**spec.labels, HOME_LABEL: str(settings.home)})
    path = log_path(settings.logs_dir, request.instance_id)  # one log per instance
    with open_log(path) as log_file:  # 0600: the image and argv are written, never the environment
        log_offset = log_file.tell()
        log_file.write(f"=== berth: container {spec.name}: {spec.image} {' '.join(spec.command)}\n".encode())
    errors = container_runtime.sdk().errors
    try:
        started = container_runtime.launch(spec)
    except container_runtime.DockerUnavailable as error:
        raise failure_error(
            ErrorCode.ENGINE_UNAVAILABLE,
            f"engine {request.engine!r} runs in Docker on this node, but {error}; start Docker, "
            "or run the engine natively",
        ) from None
    except errors.ImageNotFound:
        raise failure_error(
            ErrorCode.ENGINE_UNAVAILABLE,
            f"the image {spec.image} is not on this node: run `docker pull {spec.image}` first",
        ) from None
    except errors.APIError as error:
        if "could not select device driver" in str(error):
            raise failure_error(
                ErrorCode.CUDA_ERROR,
                "Docker cannot give the container GPUs: install the NVIDIA Container Toolkit "
                f"and restart Docker ({error.explanation or error})",
            ) from None
        raise
    return EngineRecord(
        instance_id=request.instance_id,
        deployment=request.deployment,
        engine=request.engine,
        port=request.port,
        pid=started.pid,
        pid_create_time=0.0,
        wrapper_pid=0,
        log_path=str(path),
        log_offset=log_offset,
        exit_file="",
        started_at=time.time(),
        runtime="container",
        container_id=started.id,
        run_id=run_id,
    )


def stop_instance(
    records: EngineRecords, instance_id: str, grace_s: float = 10.0, containers: bool = True, unrecorded: bool = True
) -> None:
    """Stop whatever runs for this instance, recorded or not (`unrecorded`: processes found by
    their marker too), and forget it. Idempotent."""
    record = records.get(instance_id)
    if record is not None and record.runtime == "process":
        process_runtime.stop_group(record.wrapper_pid, grace_s)
    leftovers = process_runtime.find_marked(instance_id) if unrecorded else []
    if leftovers:
        process_runtime.kill_processes(leftovers)
    if containers:
        if record is not None and record.runtime == "container":
            # a recorded container must go: when Docker does not answer, this fails and is retried
            container_runtime.stop(instance_id, grace_s, Path(record.log_path))
        elif container_runtime.docker_configured():
            try:  # one the worker made but did not record, if any
                container_runtime.stop(instance_id, grace_s)
            except container_runtime.DockerUnavailable:
                pass
    records.remove(instance_id)
    remove_target(records.run_dir.parent, instance_id)  # run_dir is $BERTH_HOME/run


def stop_all_for_node_shutdown(settings: Settings) -> int:
    """`berth up` is going down: stop every engine of this node, marking each record so that its
    deployment relaunches it on the next `berth up` instead of counting a failure. Returns how many."""
    records = EngineRecords(settings.run_dir)
    stopped = 0
    for record in records.all():
        records.mark_stopped_by_shutdown(record.instance_id)
        remove_target(settings.home, record.instance_id)  # listed again when supervise resumes
        if record.runtime == "container":
            try:
                stopped += record_alive(record)
                container_runtime.stop(record.instance_id, log_path=Path(record.log_path))
            except container_runtime.DockerUnavailable as error:
                log.warning("cannot stop the container of %s: %s", record.instance_id, error)
            continue
        if process_runtime.is_alive(record.pid, record.pid_create_time):
            stopped += 1
        process_runtime.stop_group(record.wrapper_pid)
    return stopped
