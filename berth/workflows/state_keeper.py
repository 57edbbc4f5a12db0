"""The deployment workflow's bookkeeping: what the `state` query answers and the search attributes
say. Transitions, instance statuses, the engine's choice, the prepared files, the last error.
Deterministic: times come from `workflow.now()`.

At each transition it also updates what the Temporal UI shows (the current details, Markdown:
berth.domain.ui_details) and berth's metrics that the workflow knows best (failures and restarts by
code, the time to DEPLOYED: berth.domain.metric_names), through `workflow.metric_meter()`, which
records nothing during replay; neither adds a command to the history.
"""

from datetime import datetime

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from berth.domain.errors import Failure
    from berth.domain.guidance import GuidanceFacts, guidance_for
    from berth.domain.metric_names import FAILURES, RESTARTS, TIME_TO_DEPLOYED, MetricName
    from berth.domain.pipeline import EngineChoice, PreparedModel
    from berth.domain.state import DeploymentError, DeploymentState, InstanceState, Transition
    from berth.domain.status import DeploymentStatus, InstanceStatus
    from berth.domain.temporal_names import (
        ENGINE_ATTRIBUTE,
        MODEL_ATTRIBUTE,
        REPLICAS_ATTRIBUTE,
        STATUS_ATTRIBUTE,
        keyword_value,
    )
    from berth.domain.ui_details import current_details

BERTH_STATUS = SearchAttributeKey.for_keyword(STATUS_ATTRIBUTE)
BERTH_ENGINE = SearchAttributeKey.for_keyword(ENGINE_ATTRIBUTE)
BERTH_MODEL = SearchAttributeKey.for_keyword(MODEL_ATTRIBUTE)
BERTH_REPLICAS = SearchAttributeKey.for_keyword(REPLICAS_ATTRIBUTE)

MAX_TRANSITIONS = 200


class StateKeeper:
    """Writes a DeploymentState the way the workflow's steps report it."""

    def __init__(self, state: DeploymentState) -> None:
        self.state = state
        self._pass_started: datetime | None = None  # the request (restart, retry) DEPLOYED is timed from
        self._instruments: dict[str, object] = {}

    def transition(self, status: DeploymentStatus, detail: str) -> None:
        """The deployment's status changes: recorded (the last MAX_TRANSITIONS kept), searchable,
        shown in the Temporal UI and counted."""
        previous = self.state.status
        self.state.status = status
        self.state.transitions.append(Transition(at=workflow.now(), status=status, detail=detail))
        del self.state.transitions[:-MAX_TRANSITIONS]
        self.upsert_search_attributes()
        self._measure(previous, status)
        workflow.set_current_details(current_details(self.state))

    def _measure(self, previous: DeploymentStatus, status: DeploymentStatus) -> None:
        engine = self.state.engine or "none"
        starts_over = previous not in (DeploymentStatus.REQUESTED, DeploymentStatus.DEPLOYING)
        if status is DeploymentStatus.REQUESTED or (
            status is DeploymentStatus.DEPLOYING and (starts_over or self._pass_started is None)
        ):
            self._pass_started = workflow.now()
        elif status is DeploymentStatus.DEPLOYED and self._pass_started is not None:
            took = (workflow.now() - self._pass_started).total_seconds()
            self._instrument(TIME_TO_DEPLOYED).record(took, {"engine": engine})
            self._pass_started = None

    def _instrument(self, metric: MetricName):
        if metric.name not in self._instruments:
            meter = workflow.metric_meter()
            if metric.kind == "counter":
                self._instruments[metric.name] = meter.create_counter(metric.sdk_name, metric.help)
            else:
                self._instruments[metric.name] = meter.create_histogram_float(metric.sdk_name, metric.help)
        return self._instruments[metric.name]

    def set_instance(self, status: InstanceStatus, instance: InstanceState | None = None) -> None:
        """One instance's status (every instance's when None)."""
        for each in [instance] if instance is not None else self.state.instances:
            each.status = status
        if not any(each.status is InstanceStatus.COPYING_FILES for each in self.state.instances):
            self.state.download = None

    def record_engine(self, choice: EngineChoice) -> None:
        self.state.engine, self.state.engine_reasons = choice.engine, choice.reasons
        self.upsert_search_attributes()

    def take_files(self, model: PreparedModel) -> None:
        """The files are in place, with the memory plan (None when the header cannot be read)."""
        plan = model.plan
        self.state.model_path, self.state.model_choice = model.path, model.note
        self.state.context_size = plan.context_size if plan else self.state.spec.context_size
        self.state.resource_plan = plan.reasons if plan else []
        self.state.memory_per_instance = plan.estimate_bytes if plan else None
        self.state.memory_budget = plan.budget_bytes if plan else None

    def record_error(self, failure: Failure, instance: InstanceState | None = None) -> None:
        """The failure as the user reads it: code, message, what to do about it, the engine's log;
        the instance's (the deployment's takes it when no instance serves: berth.domain.replicas)."""
        error = self.error_of(failure)
        self._instrument(FAILURES).add(1, {"code": failure.code.value, "engine": self.state.engine or "none"})
        if instance is None:
            self.state.error = error
        else:
            instance.error = error

    def error_of(self, failure: Failure) -> DeploymentError:
        return DeploymentError(
            code=failure.code,
            message=failure.message,
            guidance=guidance_for(failure.code, self._guidance_facts(failure)),
            log_lines=failure.log_lines,
            suggested_context_size=failure.suggested_context_size,
            at=workflow.now(),
        )

    def count_restart(self, failure: Failure) -> None:
        """An automatic restart of one instance (a failure that led to ERROR), by its code: counted
        per instance, so a replica restarted while the others serve counts too."""
        self._instrument(RESTARTS).add(1, {"code": failure.code.value, "engine": self.state.engine or "none"})

    def reject_patch(self, invalid: ValidationError | None) -> None:
        """A retry's spec patch: why it was refused, or None once one is accepted."""
        self.state.rejected_patch = None if invalid is None else _validation_message(invalid)

    def upsert_search_attributes(self) -> None:
        updates = [
            BERTH_STATUS.value_set(self.state.status.value),
            BERTH_MODEL.value_set(keyword_value(self.state.spec.model)),
            BERTH_REPLICAS.value_set(f"{self.state.ready_replicas}/{self.state.replicas}"),
        ]
        if self.state.engine:
            updates.append(BERTH_ENGINE.value_set(self.state.engine))
        workflow.upsert_search_attributes(updates)

    def _guidance_facts(self, failure: Failure) -> GuidanceFacts:
        spec = self.state.spec
        return GuidanceFacts(
            deployment=spec.name,
            model=spec.model,
            engine=self.state.engine,
            context_size=spec.context_size,
            startup_timeout_s=spec.startup_timeout_s,
            suggested_context_size=failure.suggested_context_size,
            exit_code=failure.exit_code,
            signal=failure.signal,
            missing_files=failure.missing_files,
            driver_version=failure.driver_version,
            cuda_version=failure.cuda_version,
        )


def _validation_message(invalid: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'patch'}: {error['msg']}" for error in invalid.errors()
    )
