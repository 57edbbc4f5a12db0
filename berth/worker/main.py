"""The berth worker: this node's workflows (queue `berth`) and side effects (queue `berth-node-<id>`)."""

import asyncio
import logging
import os
import signal
from datetime import timedelta

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from berth.activities.cluster import node_presence, release_instance, reserve_instance
from berth.activities.drain import drain_engine
from berth.activities.files import prepare_files
from berth.activities.launch import launch_engine, stop_engine
from berth.activities.placement import check_spec
from berth.activities.ports import allocate_port, release_port
from berth.activities.readiness import await_ready
from berth.activities.routing import configure_route, remove_route
from berth.activities.supervision import supervise
from berth.common.api_token import load_api_token, token_path
from berth.common.gc_pauses import freeze_start_up_objects, freeze_survivors
from berth.common.temporal_connection import connect
from berth.common.temporal_options import check_or_exit
from berth.domain.cluster import presence_task_queue
from berth.node.file_server import start_file_server, stop_file_server  # files: NODE:/path copies
from berth.node.gateway_certificate import certificate_path, ensure_certificate
from berth.node.routes import adopt_route_files, write_gateway_config
from berth.settings import CONTROL_TASK_QUEUE, Settings
from berth.worker import fault_injection
from berth.worker.cluster_join import Membership
from berth.worker.fault_injection import KillWorkerInterceptor
from berth.worker.metrics_runtime import worker_runtime
from berth.worker.open_files import raise_open_files_limit
from berth.worker.reconcile import Reconciler
from berth.worker.takeover import take_over_from_dead_workers
from berth.worker.worker_ready import announce_ready, withdraw_ready
from berth.workflows.cluster import ClusterWorkflow
from berth.workflows.deployment import DeploymentWorkflow

NODE_ACTIVITIES = [
    allocate_port,
    release_port,
    configure_route,
    remove_route,
    prepare_files,
    launch_engine,
    await_ready,
    supervise,
    drain_engine,
    stop_engine,
]
# Every DEPLOYED engine holds one supervise activity: leave room for many.
MAX_NODE_ACTIVITIES = 4000


def workflow_runner() -> WorkflowRunner:
    """Workflows run outside the SDK's sandbox, unless BERTH_WORKFLOW_SANDBOX=1.

    The sandbox re-imports the workflow's module for every workflow run and proxies each activation
    through its import and builtins guards: measured here, ~50 ms more from request to DEPLOYED on
    the tiny model (median of 24 deployments each way: 402 -> 346 ms), with ~30-50 ms less worker CPU
    per deployment. What it guards against is kept by other means: the workflow imports only
    pure modules (domain, temporal names), and tests/test_replay.py replays the recorded histories
    of every workflow generation through the Replayer, which runs them in the sandbox (a call the
    sandbox forbids fails there). BERTH_WORKFLOW_SANDBOX=1 puts the live worker back in it, e.g.
    while changing the workflow."""
    if os.environ.get("BERTH_WORKFLOW_SANDBOX") == "1":
        return SandboxedWorkflowRunner()
    return UnsandboxedWorkflowRunner()


def reconcile_interval_s() -> float:
    """How often the node is checked for engines, ports and routes that no deployment owns."""
    return float(os.environ.get("BERTH_RECONCILE_INTERVAL_S") or 30)


async def connect_with_retry(settings: Settings, stop: asyncio.Event, timeout_s: float = 60, runtime=None):
    """Temporal may still be opening its port (berth up starts everything at once): keep trying."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await connect(settings, runtime)
        except RuntimeError:
            if stop.is_set() or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    settings.ensure_dirs()
    write_gateway_config(settings)
    if load_api_token(settings) is None:
        logging.warning(
            "no API token (BERTH_API_TOKEN or %s): every call to a deployment that is not public is "
            "checked by the API at %s (forwardAuth) before it reaches an engine", token_path(settings),
            settings.api_url
        )
    adopted = adopt_route_files(settings)
    if adopted:
        logging.info("routes of %d deployment(s) moved from their own files into the route table", len(adopted))
    client = await connect_with_retry(settings, stop, runtime=worker_runtime(settings))
    if client is None:
        return
    control = Worker(
        client,
        task_queue=CONTROL_TASK_QUEUE,
        workflows=[DeploymentWorkflow, ClusterWorkflow],
        activities=[check_spec, reserve_instance, release_instance],
        workflow_runner=workflow_runner(),
        graceful_shutdown_timeout=timedelta(seconds=2),
        # a restarted worker takes over the workflows of the dead one after this (default 10 s). It
        # hosts the cluster workflow too: a restarted worker's join (a query, then an update) waits
        # this long twice, and must land within the node's grace (8 s, less up to a quarter for the
        # dead worker's last heartbeat) or the node is DOWN and, alone in its cluster, fences every
        # engine it could have re-adopted. 3 s made that 7 s under the test suite's load.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
    )
    node = Worker(
        client,
        task_queue=settings.node_queue,
        activities=NODE_ACTIVITIES,
        max_concurrent_activities=MAX_NODE_ACTIVITIES,
        graceful_shutdown_timeout=timedelta(seconds=2),
        interceptors=[KillWorkerInterceptor(settings.home)] if fault_injection.enabled() else [],
    )
    reconciler = Reconciler(client, settings)
    membership = Membership(client, settings, reconciler)
    # the node's presence in the cluster (berth.workflows.cluster): a worker of its own, so that its
    # heartbeats go every quarter of the grace (the node worker throttles them to 0.8 x the timeout)
    presence = Worker(
        client,
        task_queue=presence_task_queue(settings.node_id),
        activities=[node_presence],
        max_concurrent_activities=8,
        max_heartbeat_throttle_interval=timedelta(seconds=settings.node_grace_s / 4),
        graceful_shutdown_timeout=timedelta(seconds=1),
    )
    files = await start_file_server(settings)  # files: this node's model files for other nodes (docs/models.md)
    try:
        async with control, node, presence:
            joining = asyncio.create_task(membership.run(stop))
            announcing = asyncio.create_task(announce_then_take_over(client, settings, stop))
            certifying = asyncio.create_task(give_gateway_a_certificate(settings))
            freezing = asyncio.create_task(freeze_survivors(stop))
            await reconciler.run_forever(reconcile_interval_s(), stop)
            joining.cancel()
            announcing.cancel()
            certifying.cancel()
            freezing.cancel()
    finally:
        await stop_file_server(settings, files)  # files: its route goes with it
        withdraw_ready(settings)


async def announce_then_take_over(client: Client, settings: Settings, stop: asyncio.Event) -> None:
    """Once polling: tell `berth up`, then take over what a dead worker of this node still holds
    (its retried attempts then come to this worker)."""
    await announce_when_polling(client, settings, stop)
    if stop.is_set():
        return
    try:
        await take_over_from_dead_workers(client, settings)
    except Exception:  # noqa: BLE001 - the heartbeat timeouts still hand the attempts over
        logging.exception("taking over from a dead worker failed")


async def give_gateway_a_certificate(settings: Settings) -> None:
    """Made once per home, at once, by a process at the lowest CPU priority (it only makes Traefik's
    reloads cheap, and its ~0.15 s of CPU must not delay what `berth up` waits for); then the
    gateway config carries it. Until round 10 a new home waited 3 s first: deployments made in
    those seconds (`berth up --deploy`, the first runs of the bench) paid Traefik 30-380 ms of CPU
    for a fresh RSA key at each route change, on the cores their engines were loading on."""
    if await ensure_certificate(certificate_path(settings)):
        write_gateway_config(settings)


async def polling(client: Client, settings: Settings) -> bool:
    """Temporal lists this process as a poller of both of its queues (workflows on `berth`,
    activities on the node's queue): what makes a deployment move."""
    for queue, kind in (
        (CONTROL_TASK_QUEUE, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
        (settings.node_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
    ):
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind)
        )
        if not any(poller.identity == client.identity for poller in response.pollers):
            return False
    return True


async def announce_when_polling(client: Client, settings: Settings, stop: asyncio.Event) -> None:
    """Tell `berth up` (berth.worker.worker_ready) once Temporal sees this worker polling."""
    while not stop.is_set():
        try:
            if await polling(client, settings):
                announce_ready(settings)
                logging.info("berth worker polling %s and %s", CONTROL_TASK_QUEUE, settings.node_queue)
                return
        except Exception as error:  # noqa: BLE001 - Temporal not answering yet: ask again
            logging.debug("not polling yet: %s", error)
        await asyncio.sleep(0.05)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe is noise

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(Settings.from_env(), stop)

    check_or_exit(Settings.from_env())  # a BERTH_TEMPORAL_* file missing: say so, no traceback
    raise_open_files_limit()
    freeze_start_up_objects()
    asyncio.run(_run())


if __name__ == "__main__":
    main()
