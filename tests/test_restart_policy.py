"""Where each failure leads: ERROR with a retry, or FAILED / MUST_REDOWNLOAD waiting for the user."""

import pytest

from berth.domain.errors import ErrorCode as C
from berth.domain.restart_policy import decide
from berth.domain.spec import RestartPolicy
from berth.domain.status import DeploymentStatus as S

POLICY = RestartPolicy(max_attempts=3, backoff_initial_s=1, backoff_max_s=60)


@pytest.mark.parametrize(
    "code, attempts, status, attempt, backoff",
    [
        (C.CONTAINER_EXITED, 0, S.ERROR, 1, 0),  # the first restart is immediate
        (C.CONTAINER_EXITED, 1, S.ERROR, 2, 1),
        (C.CONTAINER_EXITED, 2, S.ERROR, 3, 2),
        (C.CONTAINER_EXITED, 3, S.FAILED, 0, 0),
        (C.RUNTIME_ERROR, 0, S.ERROR, 1, 0),
        (C.CUDA_ERROR, 2, S.ERROR, 3, 2),
        (C.TRANSIENT, 0, S.ERROR, 1, 0),
        (C.STARTUP_TIMEOUT, 0, S.ERROR, 1, 0),
        (C.STARTUP_TIMEOUT, 1, S.FAILED, 0, 0),
        (C.OOM, 0, S.FAILED, 0, 0),
        (C.MODEL_LOADING_FAILURE, 0, S.FAILED, 0, 0),
        (C.ENGINE_UNAVAILABLE, 0, S.FAILED, 0, 0),
        (C.NODE_MISCONFIGURED, 0, S.FAILED, 0, 0),
        (C.MUST_REDOWNLOAD, 0, S.MUST_REDOWNLOAD, 0, 0),
    ],
)
def test_decisions(code, attempts, status, attempt, backoff):
    decision = decide(code, attempts, POLICY)
    assert (decision.status, decision.attempt, decision.backoff_s) == (status, attempt, backoff)
    assert decision.reason


def test_the_backoff_is_capped():
    policy = RestartPolicy(max_attempts=20, backoff_initial_s=1, backoff_max_s=5)
    assert [decide(C.CONTAINER_EXITED, n, policy).backoff_s for n in range(6)] == [0, 1, 2, 4, 5, 5]


def test_a_flapping_engine_cannot_loop_forever():
    attempts, statuses = 0, []
    for _ in range(100):
        decision = decide(C.CONTAINER_EXITED, attempts, POLICY)
        statuses.append(decision.status)
        if decision.status is not S.ERROR:
            break
        attempts = decision.attempt
    assert statuses == [S.ERROR] * 3 + [S.FAILED]


def test_zero_attempts_means_fail_at_once():
    assert decide(C.CONTAINER_EXITED, 0, RestartPolicy(max_attempts=0)).status is S.FAILED
