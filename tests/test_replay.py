"""Replay: recorded histories of each kind of deployment must replay against the current
DeploymentWorkflow without a nondeterminism error.

The histories (tests/fixtures/histories/<kind>.json) come from a real stack, through
`python -m berth.testing.record_histories tests/fixtures/histories`. When this test fails after a
change of deployment.py:
  - before a release: the change is fine if it is intended; record the histories again;
  - after a release: running workflows have such histories; guard the change with
    `workflow.patched("<id>")` (old path when it returns False) and keep the old recordings.
"""

import json
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

# the sandbox imports this module again to run ChangedDeploymentWorkflow: pass berth through
with workflow.unsafe.imports_passed_through():
    from berth.domain.pipeline import SELECT_ENGINE, SelectEngineInput
    from berth.domain.state import DeploymentState
    from berth.domain.temporal_names import WORKFLOW_TYPE
    from berth.testing.record_histories import EXPECTED_END, KINDS, history_workflow_id
    from berth.workflows.deployment import (
        BERTH_MODEL,
        BERTH_STATUS,
        DeploymentInput,
        DeploymentWorkflow,
    )

HISTORIES = Path(__file__).parent / "fixtures" / "histories"
END_EVENT = {
    "COMPLETED": "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED",
    "CANCELED": "EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED",
}


def history(kind: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(history_workflow_id(kind), (HISTORIES / f"{kind}.json").read_text())


def replayer(*workflows) -> Replayer:
    return Replayer(workflows=list(workflows), data_converter=pydantic_data_converter)


def test_every_kind_is_recorded():
    assert sorted(path.stem for path in HISTORIES.glob("*.json")) == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_the_recording_is_what_its_name_says(kind):
    events = json.loads((HISTORIES / f"{kind}.json").read_text())["events"]
    types = [event["eventType"] for event in events]
    activities = [
        event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for event in events
        if event["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
    ]
    signals = [
        event["workflowExecutionSignaledEventAttributes"]["signalName"]
        for event in events
        if event["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"
    ]
    assert types[-1] == END_EVENT[EXPECTED_END[kind].name]
    assert activities[-3:] == ["stop_engine", "remove_route", "release_port"], "teardown last"
    if kind == "stop-early":
        assert "launch_engine" not in activities
    else:
        assert "supervise" in activities or kind == "failure"
    if kind == "retry":
        assert "retry" in signals and activities.count("launch_engine") == 3  # first, after ERROR, after retry
    if kind == "cancel":
        assert "EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED" in types and not signals
    else:
        assert signals[-1] == "stop"


@pytest.mark.parametrize("kind", KINDS)
async def test_recorded_history_replays_against_the_current_workflow(kind):
    result = await replayer(DeploymentWorkflow).replay_workflow(history(kind))
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
        await workflow.execute_activity(  # the real workflow places the deployment first
            SELECT_ENGINE,
            SelectEngineInput(model=input.spec.model),
            start_to_close_timeout=timedelta(seconds=15),
        )
        return self._state


@pytest.mark.parametrize("kind", ["success", "stop-early"])
async def test_replay_fails_against_a_changed_workflow(kind):
    with pytest.raises(workflow.NondeterminismError) as raised:
        await replayer(ChangedDeploymentWorkflow).replay_workflow(history(kind))
    assert "place_deployment" in str(raised.value) and "select_engine" in str(raised.value)
