"""Reconcile against a stand-in Temporal client: a cycle where nothing changed costs one count; each
run is asked for its instances once; nothing is reaped without a fresh answer (visibility trails
the workflows)."""

from dataclasses import dataclass, field

from temporalio.client import WorkflowExecutionStatus

from berth.node.engine_records import EngineRecord, EngineRecords
from berth.worker.reconcile import Reconciler
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
        asked = _run_ids(query)
        executions = [
            _Execution(workflow_id(name), run.run_id)
            for name, run in self.runs.items()
            if run.listed and run.running and (asked is None or run.run_id in asked)
        ]

        async def rows():
            for execution in executions:
                yield execution

        return rows()

    async def count_workflows(self, query: str):
        self.counts += 1
        assert "ExecutionStatus = 'Running'" in query and "RunId IN (" in query
        asked = _run_ids(query)
        running = {run.run_id for run in self.runs.values() if run.listed and run.running}
        return _Count(len(asked & running))

    def get_workflow_handle(self, workflow_id_: str):
        return _Handle(self, workflow_id_.removeprefix(workflow_id("")))


def _run_ids(query: str) -> set[str] | None:
    if "RunId IN (" not in query:
        return None
    return {run.strip(" '") for run in query.split("RunId IN (", 1)[1].rstrip(")").split(",")}


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


def record(records: EngineRecords, instance_id: str, run_id: str = "") -> None:
    records.put(EngineRecord(
        instance_id=instance_id, deployment=instance_id.rsplit("-", 1)[0], engine="llamacpp", port=1,
        pid=0, pid_create_time=0, wrapper_pid=0, log_path="/dev/null", log_offset=0, exit_file="", started_at=0,
        run_id=run_id,
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


async def test_engines_whose_launching_run_runs_are_kept_without_asking_each_deployment(tmp_path):
    """A burst of new engines between two cycles: their records name the runs that launched them,
    and one visibility list confirms those runs, so no deployment is asked for its state. Records
    whose run does not run (ended; an old run of a redeployed name) or is not visible yet are still
    asked afresh, and only the orphans go."""
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_PORT_RANGE": "30000-30099"})
    settings.ensure_dirs()
    records = EngineRecords(settings.run_dir)
    record(records, "a-00000001", "ra")
    temporal = StandInTemporal({"a": Run("ra", ["a-00000001"])})
    reconciler = Reconciler(temporal, settings)
    assert not await reconciler.run_once()
    assert temporal.asked == [], "the full list showed the run that launched it"

    names = [f"burst{i}" for i in range(300)]  # more runs than one list request takes
    for i, name in enumerate(names):
        record(records, f"{name}-0000000{i % 10}", f"r{name}")
        temporal.runs[name] = Run(f"r{name}", [f"{name}-0000000{i % 10}"])
    record(records, "ended-00000002", "rended")
    temporal.runs["ended"] = Run("rended", ["ended-00000002"], running=False)
    record(records, "again-00000003", "rold")  # launched by an earlier run of the name
    temporal.runs["again"] = Run("rnew", ["again-00000004"])
    record(records, "late-00000005", "rlate")
    temporal.runs["late"] = Run("rlate", ["late-00000005"], listed=False)
    temporal.lists = temporal.counts = 0

    report = await reconciler.run_once()
    assert sorted(report.engines_stopped) == ["again-00000003", "ended-00000002"]
    assert sorted(temporal.asked) == ["again", "ended", "late"], "no burst deployment was asked"
    assert (temporal.counts, temporal.lists) == (1, 2), "the known run still runs; the new runs in two lists"
    assert len(records.all()) == 302

    temporal.runs["late"].listed = True
    temporal.asked.clear()
    temporal.lists = temporal.counts = 0
    assert not await reconciler.run_once()
    assert (temporal.asked, temporal.lists) == ([], 0), "every run known and counted as running"
