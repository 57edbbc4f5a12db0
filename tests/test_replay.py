"""Replay: recorded histories of each kind of deployment must replay against the current
DeploymentWorkflow without a nondeterminism error.

The histories (tests/fixtures/histories/<generation>/<kind>.json) come from a real stack, through
`python -m berth.testing.record_histories tests/fixtures/histories/<generation>`. GENERATIONS holds
one folder per live generation: one whose workflows may still be open somewhere. berth is
unreleased, so there is one, gen1. When this test fails after a change of berth/workflows/:
  - before a release: the change is fine if it is intended; record gen1 again;
  - after a release: open workflows have such histories; guard the change with
    `workflow.patched("<id>")`, record a new generation next to the old and add it here.
The policy: docs/workflow-versioning.md.
"""

import base64
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

# the sandbox imports this module again to run ChangedDeploymentWorkflow: pass berth through
with workflow.unsafe.imports_passed_through():
    from berth.domain.pipeline import ALLOCATE_PORT, PortRequest
    from berth.domain.state import DeploymentState
    from berth.domain.temporal_names import WORKFLOW_TYPE
    from berth.testing.record_histories import EXPECTED_END, KINDS, history_workflow_id
    from berth.workflows.deployment import BERTH_MODEL, BERTH_STATUS, DeploymentInput, DeploymentWorkflow

HISTORIES = Path(__file__).parent / "fixtures" / "histories"
# One folder per live generation, oldest first; the next generation is one more entry.
GENERATIONS = ["gen1"]
# The workflow.patched() ids the live workflow code asks (none in gen1): a history records no others.
LIVE_PATCHES: set[str] = set()
RECORDINGS = [(generation, kind) for generation in GENERATIONS for kind in KINDS]
END_EVENT = {
    "COMPLETED": "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED",
    "CANCELED": "EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED",
}


def history(generation: str, kind: str) -> WorkflowHistory:
    path = HISTORIES / generation / f"{kind}.json"
    return WorkflowHistory.from_json(history_workflow_id(kind), path.read_text())


def replayer(*workflows) -> Replayer:
    # In the SDK's sandbox, although the live worker runs workflows outside it (berth.worker.main.
    # workflow_runner): a call the sandbox forbids, on any path these histories take, fails here.
    return Replayer(
        workflows=list(workflows), data_converter=pydantic_data_converter, workflow_runner=SandboxedWorkflowRunner()
    )


@pytest.mark.parametrize("generation", GENERATIONS)
def test_every_kind_is_recorded(generation):
    assert sorted(path.stem for path in (HISTORIES / generation).glob("*.json")) == sorted(KINDS)


def marker_data(events: list[dict], marker: str, detail: str) -> list[dict]:
    """The JSON payloads (base64 in the export) under `detail` of every `marker` recorded in a history."""
    return [
        json.loads(base64.b64decode(payload["data"]))
        for event in events
        if event.get("markerRecordedEventAttributes", {}).get("markerName") == marker
        for payload in event["markerRecordedEventAttributes"]["details"][detail]["payloads"]
    ]


def patches(events: list[dict]) -> set[str]:
    """The workflow.patched() ids recorded in a history."""
    return {data["id"] for data in marker_data(events, "core_patch", "patch-data")}


def local_activities(events: list[dict]) -> list[str]:
    """The activity types of the local activities recorded in a history."""
    return [data["activity_type"] for data in marker_data(events, "core_local_activity", "data")]


@pytest.mark.parametrize("generation, kind", RECORDINGS)
def test_the_recording_is_what_its_name_says(generation, kind):
    events = json.loads((HISTORIES / generation / f"{kind}.json").read_text())["events"]
    assert patches(events) <= LIVE_PATCHES
    types = [event["eventType"] for event in events]
    activities = [
        event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for event in events
        if event["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
    ]
    # each pass starts with the spec checked by a local activity (one per launch, none when stopped
    # before the first pass); then the instance is placed by the cluster (reserve_instance, a local
    # activity: a marker) before any activity task; every reservation is released at the end
    local = local_activities(events)
    assert set(local) <= {"check_spec", "reserve_instance", "release_instance"}, local
    assert not set(local) & set(activities)
    if kind != "stop-early":
        assert local[0] == "check_spec"
        assert local.count("check_spec") == max(1, activities.count("launch_engine"))
    if kind not in ("stop-early", "refused"):
        placed = next(i for i, event in enumerate(events)
                      if local_activities([event]) == ["reserve_instance"])
        assert "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED" not in types[:placed]
        assert local[-1] == "release_instance", local[-3:]
    # the engine's choice and the memory plan come with the files: no steps of their own
    assert "select_engine" not in activities and "plan_resources" not in activities
    signals = [
        event["workflowExecutionSignaledEventAttributes"]["signalName"]
        for event in events
        if event["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"
    ]
    assert types[-1] == END_EVENT[EXPECTED_END[kind].name]
    # teardown last: every engine stopped, the route removed, every port released
    teardown = "".join({"stop_engine": "s", "remove_route": "r", "release_port": "p"}.get(a, "x") for a in activities)
    assert not activities or re.search(r"s+rp+$", teardown), activities[-6:]
    if kind == "stop-early":
        assert "launch_engine" not in activities
    elif kind == "refused":  # check_spec refused it before it was placed: nothing ran on any node
        assert activities == [], activities
    else:
        assert activities[:2] == ["allocate_port", "prepare_files"], "the port beside the files, first"
        assert "supervise" in activities or kind == "failure"
    if kind == "retry":
        assert "retry" in signals and activities.count("launch_engine") == 3  # first, after ERROR, after retry
    if kind == "cancel":
        assert "EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED" in types and not signals
    else:
        assert signals[-1] == "stop"


@pytest.mark.parametrize("generation, kind", RECORDINGS)
async def test_recorded_history_replays_against_the_current_workflow(generation, kind):
    result = await replayer(DeploymentWorkflow).replay_workflow(history(generation, kind))
    assert result.replay_failure is None


# A deliberately changed DeploymentWorkflow: same name and input, but its first step is another
# activity. Replaying any recording against it must fail: the replay test can catch a change.
@workflow.defn(name=WORKFLOW_TYPE)
class ChangedDeploymentWorkflow:
    @workflow.init
    def __init__(self, input: DeploymentInput) -> None:
        self._state = DeploymentState(spec=input.spec)

    @workflow.query(name="state")
    def state(self) -> DeploymentState:
        return self._state

    @workflow.signal(name="stop")
    def stop(self) -> None:
        pass

    @workflow.signal(name="retry")
    def retry(self, patch: dict | None = None) -> None:
        pass

    @workflow.run
    async def run(self, input: DeploymentInput) -> DeploymentState:
        workflow.upsert_search_attributes(  # as the real workflow does on REQUESTED
            [BERTH_STATUS.value_set("REQUESTED"), BERTH_MODEL.value_set(input.spec.model)]
        )
        await workflow.execute_activity(  # the real workflow checks the spec and places it first, locally
            ALLOCATE_PORT,
            PortRequest(instance_id="changed"),
            start_to_close_timeout=timedelta(seconds=15),
        )
        return self._state


@pytest.mark.parametrize("generation, kind", [(g, k) for g in GENERATIONS for k in ("success", "stop-early")])
async def test_replay_fails_against_a_changed_workflow(generation, kind):
    with pytest.raises(workflow.NondeterminismError) as raised:
        await replayer(ChangedDeploymentWorkflow).replay_workflow(history(generation, kind))
    # the history's next command after REQUESTED is not the changed workflow's activity
    assert "Nondeterminism" in str(raised.value) or "Missing associated machine" in str(raised.value), raised.value
