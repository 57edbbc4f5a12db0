"""Reconcile against a stand-in Temporal client: a cycle where nothing changed costs one count; each
run is asked for its instances once; nothing is reaped without a fresh answer (visibility trails
the workflows)."""

from dataclasses import dataclass, field

from temporalio.client import WorkflowExecutionStatus

from berth.activities.engine_records import EngineRecord, EngineRecords
from berth.activities.reconcile import Reconciler
from berth.domain.spec import DeploymentSpec
from berth.domain.state import DeploymentState, InstanceState
from berth.domain.temporal_names import workflow_id
from berth.settings import Settings


@dataclass
class Run:
    run_id: str
    instances: list[str]
    listed: bool = True  # in the visibility store yet
    running: bool = True


@dataclass
class StandInTemporal:
    runs: dict[str, Run]  # deployment name -> its current run
    lists: int = 0
    counts: int = 0
    asked: list[str] = field(default_factory=list)  # describe/query calls, by deployment

    def list_workflows(self, query: str, page_size: int = 1000):
        self.lists += 1
        assert "ExecutionStatus = 'Running'" in query
        executions = [
            _Execution(workflow_id(name), run.run_id)
            for name, run in self.runs.items() if run.listed and run.running
        ]

        async def rows():
            for execution in executions:
                yield execution

        return rows()

    async def count_workflows(self, query: str):
        self.counts += 1
        assert "ExecutionStatus = 'Running'" in query and "RunId IN (" in query
        asked = {run.strip(" '") for run in query.split("RunId IN (", 1)[1].rstrip(")").split(",")}
        running = {run.run_id for run in self.runs.values() if run.listed and run.running}
        return _Count(len(asked & running))

    def get_workflow_handle(self, workflow_id_: str):
        return _Handle(self, workflow_id_.removeprefix(workflow_id("")))


@dataclass
class _Count:
    count: int


@dataclass
class _Execution:
    id: str
    run_id: str


@dataclass
class _Handle:
    temporal: StandInTemporal
    name: str

    async def describe(self):
        self.temporal.asked.append(self.name)
        run = self.temporal.runs[self.name]
        status = WorkflowExecutionStatus.RUNNING if run.running else WorkflowExecutionStatus.TERMINATED
        return _Description(status, run.run_id)

    async def query(self, name, result_type):
        run = self.temporal.runs[self.name]
        state = DeploymentState(spec=DeploymentSpec(name=self.name, model="/m.gguf"))
        state.instances = [InstanceState(instance_id=i, node="n") for i in run.instances]
        return state


@dataclass
class _Description:
    status: WorkflowExecutionStatus
    run_id: str


def record(records: EngineRecords, instance_id: str) -> None:
    records.put(EngineRecord(
        instance_id=instance_id, deployment=instance_id.rsplit("-", 1)[0], engine="llamacpp", port=1,
        pid=0, pid_create_time=0, wrapper_pid=0, log_path="/dev/null", log_offset=0, exit_file="", started_at=0,
    ))


async def test_a_cycle_where_nothing_changed_is_one_count(tmp_path):
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_PORT_RANGE": "30000-30099"})
    settings.ensure_dirs()
    records = EngineRecords(settings.run_dir)
    for instance in ("a-00000001", "b-00000002", "late-00000003", "gone-00000004"):
        record(records, instance)
    temporal = StandInTemporal({
        "a": Run("ra", ["a-00000001"]),
        "b": Run("rb", ["b-00000009"]),  # runs another instance now: b-00000002 is an orphan
        "late": Run("rl", ["late-00000003"], listed=False),  # started a moment ago: not listed yet
        "gone": Run("rg", ["gone-00000004"], running=False),  # terminated from the UI
    })
    reconciler = Reconciler(temporal, settings)

    report = await reconciler.run_once()
    assert sorted(report.engines_stopped) == ["b-00000002", "gone-00000004"]
    assert {r.instance_id for r in records.all()} == {"a-00000001", "late-00000003"}
    assert temporal.lists == 1 and sorted(temporal.asked) == ["a", "b", "gone", "late"]

    temporal.runs["late"].listed = True
    temporal.asked.clear()
    assert not await reconciler.run_once()
    assert not await reconciler.run_once()
    assert (temporal.lists, temporal.counts, temporal.asked) == (1, 2, []), "nothing changed: counts only"

    temporal.runs["a"] = Run("ra2", ["a-00000005"])  # redeployed: the old engine is no one's
    report = await reconciler.run_once()
    assert report.engines_stopped == ["a-00000001"] and temporal.lists == 2 and temporal.asked == ["a"]


async def test_a_run_not_listed_yet_is_asked_before_anything_is_reaped(tmp_path):
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_PORT_RANGE": "30000-30099"})
    settings.ensure_dirs()
    records = EngineRecords(settings.run_dir)
    record(records, "new-00000001")
    temporal = StandInTemporal({"new": Run("rn", ["new-00000001"], listed=False)})
    assert not await Reconciler(temporal, settings).run_once()
    assert records.get("new-00000001") is not None and temporal.asked == ["new"]
