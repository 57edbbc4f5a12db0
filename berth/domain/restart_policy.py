"""Where a failure leads: ERROR with an automatic retry after a backoff, or FAILED / MUST_REDOWNLOAD."""

from dataclasses import dataclass

from berth.domain.errors import ErrorCode
from berth.domain.spec import RestartPolicy
from berth.domain.status import DeploymentStatus

# Codes that an automatic restart cannot fix: the spec (or, for NODE_MISCONFIGURED, the node) must change.
NEEDS_A_CHANGE = frozenset(
    {ErrorCode.OOM, ErrorCode.MODEL_LOADING_FAILURE, ErrorCode.ENGINE_UNAVAILABLE, ErrorCode.NODE_MISCONFIGURED}
)
# STARTUP_TIMEOUT is retried once with the same spec (a cold cache, a busy disk), then FAILED.
STARTUP_TIMEOUT_ATTEMPTS = 1


@dataclass(frozen=True)
class Decision:
    status: DeploymentStatus
    attempt: int  # the automatic attempt this decision schedules (0 when none)
    backoff_s: float = 0.0
    reason: str = ""


def decide(code: ErrorCode, attempts_so_far: int, policy: RestartPolicy) -> Decision:
    """The next status after a failure with `code`, given the automatic attempts already made."""
    if code is ErrorCode.MUST_REDOWNLOAD:
        return Decision(DeploymentStatus.MUST_REDOWNLOAD, 0, reason="the model files must be fetched again")
    if code in NEEDS_A_CHANGE:
        return Decision(DeploymentStatus.FAILED, 0, reason="restarting as it is cannot fix this")
    limit = policy.max_attempts
    if code is ErrorCode.STARTUP_TIMEOUT:
        limit = min(limit, STARTUP_TIMEOUT_ATTEMPTS)
    attempt = attempts_so_far + 1
    if attempt > limit:
        return Decision(
            DeploymentStatus.FAILED, 0, reason=f"gave up after {attempts_so_far} automatic restarts"
        )
    return Decision(
        DeploymentStatus.ERROR,
        attempt,
        policy.backoff_s(attempt),
        reason=f"automatic restart {attempt} of {limit}",
    )
