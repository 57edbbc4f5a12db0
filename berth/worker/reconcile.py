"""Reconcile this node with Temporal: every engine, port reservation and route on the node, and every
memory reservation the cluster workflow holds for it, must belong to a running deployment that
still lists it; anything else is stopped and released.

Runs when the worker starts and then periodically, so that even a deployment terminated from the
Temporal UI (where no workflow code runs) leaves nothing behind for longer than one period.
Engines still owned are left alone: their deployment's supervise activity re-adopts them.
When Temporal cannot say (a query times out), nothing is reaped: only sure orphans go.

What it costs Temporal per cycle is one visibility count (milliseconds), whatever the number of
deployments. The instance ids a run lists are remembered with its run id (a run places its instance
once), so each run is queried once, not every cycle; a count of the remembered runs that still run
tells whether anything changed, and only then is the list of running deployments read (~1 ms of
Temporal's time per row). An engine's record names the run that launched it: the runs of new engines
are confirmed running by one visibility list, without a query each. Asking every deployment for its
`state` each cycle (a describe and a query each, ~20 ms of Temporal's and the worker's CPU) took
both to 55-78% of a core for seconds every cycle with 200 deployments, and the p99 of status reads
with them.
Before anything is reaped the answer is checked afresh (describe, query): the visibility store
trails the workflows by about a second, and a remembered answer must never stop a live engine.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODES_QUERY, RELEASE_UPDATE, ClusterView, ReleaseRequest
from berth.domain.metric_names import ROUTES
from berth.domain.spec import NAME_PATTERN
from berth.domain.state import DeploymentState
from berth.domain.temporal_names import STATE_QUERY, WORKFLOW_TYPE, workflow_id
from berth.node import process_runtime
from berth.node.engine_launch import stop_instance
from berth.node import metrics
from berth.node.engine_targets import prune_targets
from berth.node.instance_counts import COUNTS
from berth.node.engine_records import EngineRecord, EngineRecords
from berth.node.ports import registry
from berth.node.route_publisher import route_publisher
from berth.node.route_table import RouteTable
from berth.settings import Settings

log = logging.getLogger(__name__)
QUERY_TIMEOUT_S = 5
RUNNING_DEPLOYMENTS = f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
WORKFLOW_ID_PREFIX = workflow_id("")
COUNT_CHUNK = 200  # run ids per count request


class _Unknown(Exception):
    """Temporal could not tell whether the deployment owns the instance."""


@dataclass
class ReconcileReport:
    engines_stopped: list[str] = field(default_factory=list)
    ports_released: list[str] = field(default_factory=list)
    routes_removed: list[str] = field(default_factory=list)
    reservations_released: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.engines_stopped or self.ports_released or self.routes_removed or self.reservations_released)


class Reconciler:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.records = EngineRecords(settings.run_dir)
        self.ports = registry(settings)
        self.routes = RouteTable(settings.routes_dir)
        # deployment -> (run id, the instance ids that run lists), learnt from fresh answers
        self._known: dict[str, tuple[str, frozenset[str]]] = {}

    async def _running_runs(self) -> dict[str, str]:
        """Deployment name -> run id of the running deployments: the known runs, when a count says
        they all still run (one cheap request), else every running one from a visibility list."""
        known = {name: run for name, (run, _) in self._known.items()}
        if known and await self._all_running(list(known.values())):
            return known
        running = {}
        async for execution in self.client.list_workflows(RUNNING_DEPLOYMENTS, page_size=1000):
            name = execution.id.removeprefix(WORKFLOW_ID_PREFIX)
            if name != execution.id:
                running[name] = execution.run_id
        return running

    async def _all_running(self, runs: list[str]) -> bool:
        """Whether every one of these runs still runs: counted by the visibility store, which
        answers a count in milliseconds where listing costs ~1 ms per row."""
        for start in range(0, len(runs), COUNT_CHUNK):
            chunk = runs[start : start + COUNT_CHUNK]
            ids = ", ".join(f"'{run}'" for run in chunk)
            counted = await self.client.count_workflows(f"{RUNNING_DEPLOYMENTS} AND RunId IN ({ids})")
            if counted.count != len(chunk):
                return False
        return True

    async def _owned_instances(self, deployment: str) -> set[str]:
        """Instance ids the running deployment lists; empty when it is not running. Asked afresh."""
        self._known.pop(deployment, None)
        handle = self.client.get_workflow_handle(workflow_id(deployment))
        try:
            description = await handle.describe()
            if description.status is not WorkflowExecutionStatus.RUNNING:
                return set()
            state = await asyncio.wait_for(
                handle.query(STATE_QUERY, result_type=DeploymentState), QUERY_TIMEOUT_S
            )
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                return set()
            raise _Unknown(str(error)) from error
        except Exception as error:  # a query that timed out or failed: do not guess
            raise _Unknown(str(error)) from error
        instances = {instance.instance_id for instance in state.instances}
        if instances:  # a run lists its instance from its first step on and keeps it
            self._known[deployment] = (description.run_id, frozenset(instances))
        return instances

    async def _learn_from_launching_runs(self, records: list[EngineRecord], running: dict[str, str]) -> None:
        """Each engine record names the workflow run that launched it, and a run places its instance
        once and keeps it: while that run runs, the engine is its. The runs not known yet (a burst
        of new deployments: each would otherwise be asked for its state, a describe and a query,
        ~20 ms of Temporal's and the worker's CPU, while they are busiest) are looked up together
        in the visibility store, ~1 ms a row; each that runs is added to `running` and remembered.
        A run not listed (not yet visible, ended, continued as new) leaves its record to a fresh
        answer, as before; records of an earlier berth name no run."""
        unknown: dict[str, list[EngineRecord]] = {}
        for record in records:
            if not record.run_id:
                continue
            if running.get(record.deployment) == record.run_id:  # listed as running this cycle
                self._remember(record.deployment, record.run_id, record.instance_id)
            else:
                unknown.setdefault(record.run_id, []).append(record)
        runs = list(unknown)
        try:
            for start in range(0, len(runs), COUNT_CHUNK):
                ids = ", ".join(f"'{run}'" for run in runs[start : start + COUNT_CHUNK])
                query = f"{RUNNING_DEPLOYMENTS} AND RunId IN ({ids})"
                async for execution in self.client.list_workflows(query, page_size=COUNT_CHUNK):
                    for record in unknown.get(execution.run_id, []):
                        if execution.id == workflow_id(record.deployment):
                            running[record.deployment] = execution.run_id
                            self._remember(record.deployment, execution.run_id, record.instance_id)
        except RPCError as error:  # the fresh answers below still decide
            log.warning("reconcile: cannot look up the runs that launched the engines: %s", error)

    def _remember(self, deployment: str, run_id: str, instance_id: str) -> None:
        known_run, instances = self._known.get(deployment, ("", frozenset()))
        self._known[deployment] = (run_id, (instances if known_run == run_id else frozenset()) | {instance_id})

    async def run_once(self, fresh: bool = False) -> ReconcileReport:
        """One pass. `fresh`: every owner asked afresh, nothing remembered (fencing, after the node
        was DOWN: a running deployment may have replaced the instances it had here)."""
        report = ReconcileReport()
        if fresh:
            self._known.clear()
        started = time.monotonic()
        try:
            running = await self._running_runs()
        except RPCError as error:
            log.warning("reconcile: cannot list the running deployments: %s", error)
            return report
        checked: dict[str, set[str] | None] = {}  # asked afresh this cycle; None: cannot tell

        async def ask_afresh(deployment: str) -> set[str] | None:
            if deployment not in checked:
                try:
                    checked[deployment] = await self._owned_instances(deployment)
                except _Unknown as unknown:
                    log.warning("reconcile: cannot tell who owns %s: %s", deployment, unknown)
                    checked[deployment] = None
            return checked[deployment]

        async def owned(deployment: str, instance_id: str) -> bool | None:
            """True/None (cannot tell) leave things alone; False only after a fresh answer."""
            run, instances = self._known.get(deployment, ("", frozenset()))
            if run and running.get(deployment) == run and instance_id in instances:
                return True
            asked = await ask_afresh(deployment)
            return None if asked is None else instance_id in asked

        # The node's files and port table are read in a thread: with 1000 engines, reading their
        # records took the event loop 40-60 ms, and state queries and probes waited behind it.
        records = await asyncio.to_thread(self.records.all)
        if not fresh:
            await self._learn_from_launching_runs(records, running)
        for record in records:
            if await owned(record.deployment, record.instance_id) is False:
                await asyncio.to_thread(stop_instance, self.records, record.instance_id)
                report.engines_stopped.append(record.instance_id)
        kept = {r.instance_id for r in records} - set(report.engines_stopped)
        await asyncio.to_thread(prune_targets, self.settings.home, kept)
        COUNTS.resync(kept, self.settings.node_id)  # berth_instances
        for process in await asyncio.to_thread(self._unrecorded_engines):
            instance_id = process_runtime.instance_of(process) or ""
            if await owned(_deployment_of(instance_id), instance_id) is False:
                await asyncio.to_thread(stop_instance, self.records, instance_id)
                report.engines_stopped.append(instance_id)
        for instance_id in await asyncio.to_thread(self.ports.reserved):
            if await owned(_deployment_of(instance_id), instance_id) is False:
                await asyncio.to_thread(self.ports.release, instance_id)
                report.ports_released.append(instance_id)
        routes = await asyncio.to_thread(self.routes.deployments)
        metrics.record(ROUTES, len(routes), node=self.settings.node_id)
        for deployment in sorted(routes):
            if not NAME_PATTERN.match(deployment) or deployment in running:
                continue  # not a deployment's name (put there by hand), or a running deployment's route
            if await ask_afresh(deployment) == set():  # no running deployment of that name
                await route_publisher(self.settings.routes_dir).remove(deployment)
                report.routes_removed.append(deployment)
        for instance_id in await self._reserved_here():
            # a deployment that ended without its own teardown (terminated, reset) keeps its memory
            # reserved in the cluster: released once a fresh answer says no running run lists it
            if await owned(_deployment_of(instance_id), instance_id) is False:
                await self._release(instance_id)
                report.reservations_released.append(instance_id)
        if report:
            log.info("reconcile: %s", report)
        if checked:
            log.info("reconcile: asked %d deployment(s) for their state; the pass took %.1f s",
                     len(checked), time.monotonic() - started)
        return report

    async def _reserved_here(self) -> list[str]:
        """The instance ids holding memory on this node in the cluster's view (none when there is no
        cluster workflow or it does not answer: nothing is released on a guess)."""
        try:
            view = await self.client.get_workflow_handle(CLUSTER_WORKFLOW_ID).query(NODES_QUERY, result_type=ClusterView)
        except Exception as error:  # noqa: BLE001 - no cluster workflow yet, or a query that failed
            log.debug("reconcile: no view of the cluster's reservations: %s", error)
            return []
        return [i for node in view.nodes if node.facts.node_id == self.settings.node_id for i in node.instances]

    async def _release(self, instance_id: str) -> None:
        handle = self.client.get_workflow_handle(CLUSTER_WORKFLOW_ID)
        await handle.execute_update(RELEASE_UPDATE, ReleaseRequest(instance_id=instance_id),
                                    id=f"reconcile-release-{instance_id}-{time.time_ns()}")

    def _unrecorded_engines(self) -> list:
        """Engine processes of this node ($BERTH_HOME) that no record names."""
        recorded = {record.instance_id for record in self.records.all()}
        found = []
        for process in process_runtime.marked_processes(str(self.settings.home)):
            instance_id = process_runtime.instance_of(process)
            if instance_id and instance_id not in recorded:
                found.append(process)
        return found

    async def run_forever(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # reconcile must never take the worker down
                log.exception("reconcile failed; trying again in %s s", interval_s)
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except asyncio.TimeoutError:
                pass


def _deployment_of(instance_id: str) -> str:
    """Instance ids are '<deployment>-<8 hex>'."""
    return instance_id.rsplit("-", 1)[0]
