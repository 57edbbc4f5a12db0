"""Reconcile this node with Temporal: every engine, port reservation and route on the node must
belong to a running deployment that still lists it; anything else is stopped and released.

Runs when the worker starts and then periodically, so that even a deployment terminated from the
Temporal UI (where no workflow code runs) leaves nothing behind for longer than one period.
Engines still owned are left alone: their deployment's supervise activity re-adopts them.
When Temporal cannot say (a query times out), nothing is reaped: only sure orphans go.
"""

import asyncio
import logging
from dataclasses import dataclass, field

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from berth.activities import process_runtime
from berth.activities.engine_records import EngineRecords
from berth.activities.launch import stop_instance
from berth.activities.ports import registry
from berth.activities.routing import route_path
from berth.domain.spec import NAME_PATTERN
from berth.domain.state import DeploymentState
from berth.domain.temporal_names import STATE_QUERY, workflow_id
from berth.settings import Settings

log = logging.getLogger(__name__)
QUERY_TIMEOUT_S = 5


class _Unknown(Exception):
    """Temporal could not tell whether the deployment owns the instance."""


@dataclass
class ReconcileReport:
    engines_stopped: list[str] = field(default_factory=list)
    ports_released: list[str] = field(default_factory=list)
    routes_removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.engines_stopped or self.ports_released or self.routes_removed)


class Reconciler:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.records = EngineRecords(settings.run_dir)
        self.ports = registry(settings)

    async def _owned_instances(self, deployment: str) -> set[str]:
        """Instance ids the running deployment lists; empty when it is not running."""
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
        return {instance.instance_id for instance in state.instances}

    async def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        cache: dict[str, set[str] | None] = {}

        async def owned(deployment: str, instance_id: str) -> bool | None:
            if deployment not in cache:
                try:
                    cache[deployment] = await self._owned_instances(deployment)
                except _Unknown as unknown:
                    log.warning("reconcile: cannot tell who owns %s: %s", deployment, unknown)
                    cache[deployment] = None
            instances = cache[deployment]
            return None if instances is None else instance_id in instances

        for record in self.records.all():
            if await owned(record.deployment, record.instance_id) is False:
                await asyncio.to_thread(stop_instance, self.records, record.instance_id)
                report.engines_stopped.append(record.instance_id)
        for process in await asyncio.to_thread(self._unrecorded_engines):
            instance_id = process.environ().get(process_runtime.INSTANCE_MARKER, "")
            if await owned(_deployment_of(instance_id), instance_id) is False:
                await asyncio.to_thread(stop_instance, self.records, instance_id)
                report.engines_stopped.append(instance_id)
        for instance_id in self.ports.reserved():
            if await owned(_deployment_of(instance_id), instance_id) is False:
                self.ports.release(instance_id)
                report.ports_released.append(instance_id)
        for path in self.settings.routes_dir.glob("*.yml"):
            deployment = path.stem
            if not NAME_PATTERN.match(deployment):
                continue  # the gateway's own file, not a deployment's route
            if deployment not in cache:
                await owned(deployment, "")
            if cache.get(deployment) == set():  # no running deployment of that name
                route_path(self.settings.routes_dir, deployment).unlink(missing_ok=True)
                report.routes_removed.append(deployment)
        if report:
            log.info("reconcile: %s", report)
        return report

    def _unrecorded_engines(self) -> list:
        """Engine processes of this node ($BERTH_HOME) that no record names."""
        recorded = {record.instance_id for record in self.records.all()}
        found = []
        for process in process_runtime.marked_processes(str(self.settings.home)):
            instance_id = process.environ().get(process_runtime.INSTANCE_MARKER)
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
