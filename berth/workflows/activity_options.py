"""How the deployment workflow calls each kind of activity: timeouts, retry policies, heartbeats and
cancellation. Pure option tables: the workflow passes them to `workflow.execute_activity`.
"""

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

# Short node-side steps (milliseconds of work): retried a few times, then the deployment fails
# with their error. The timeout is also how long a worker killed mid-step delays the retry.
QUICK: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=15),
    retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5),
    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
)
# Placement as a local activity: the same budget, retried by the worker itself.
LOCAL_QUICK: dict[str, Any] = dict(
    start_to_close_timeout=QUICK["start_to_close_timeout"],
    retry_policy=QUICK["retry_policy"],
)
# A route change on each gateway of the cluster: a node that does not take it within a few seconds
# (its worker is dead or frozen) is skipped: it gets the route again at the next change.
ROUTE_TAKEN_WITHIN = timedelta(seconds=5)
ROUTE: dict[str, Any] = dict(QUICK, schedule_to_start_timeout=ROUTE_TAKEN_WITHIN)
# Fetching the model's files can take hours. The heartbeat timeout is short: a stop reaches a
# download through its heartbeats (sent at most every 0.8x this); not shorter, or a busy node's
# event loop would time a healthy download out.
PREPARE_FILES: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(hours=12),
    heartbeat_timeout=timedelta(seconds=3),
    retry_policy=QUICK["retry_policy"],
    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
)
# Teardown must happen even if the node's worker is down for a while: retried until it is back.
TEARDOWN: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=60),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
    ),
)
ROUTE_TEARDOWN: dict[str, Any] = dict(TEARDOWN, schedule_to_start_timeout=ROUTE_TAKEN_WITHIN)


def drain(timeout_s: float) -> dict[str, Any]:
    """drain_engine: the deployment's drain timeout and a margin; a node that does not take it within
    a few seconds (dead, frozen) is not waited for: the stop that follows is retried until it is
    back. One attempt: a drain that failed is only a shorter drain."""
    return dict(
        schedule_to_start_timeout=ROUTE_TAKEN_WITHIN,
        start_to_close_timeout=timedelta(seconds=timeout_s + 15),
        heartbeat_timeout=timedelta(seconds=5),
        retry_policy=RetryPolicy(maximum_attempts=1),
        cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
    )


# Watching an engine: cancelled with TRY_CANCEL (stop_engine is what really stops the engine),
# heartbeats so that a dead worker is noticed and the watch resumes on the node's next worker.
WATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5)
)
# supervise heartbeats every 0.8 x this (the SDK's throttle), each a write in Temporal: measured at
# 400 supervised deployments, Temporal spent 24% of a core on them at 15 s and 6% at 60 s. A worker
# that dies is not waited out: its restarted successor fails the attempts it held at once
# (berth.worker.takeover); this timeout only bounds a worker that hangs without dying.
SUPERVISE_HEARTBEAT_TIMEOUT = timedelta(seconds=60)


def await_ready(startup_timeout_s: float) -> dict[str, Any]:
    """await_ready: as long as the spec gives the engine to load, and two minutes more."""
    return dict(
        start_to_close_timeout=timedelta(seconds=startup_timeout_s + 120),
        heartbeat_timeout=timedelta(seconds=5),
        retry_policy=WATCH_RETRY,
        cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
    )


# supervise: as long as the engine serves.
SUPERVISE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(days=3650),
    heartbeat_timeout=SUPERVISE_HEARTBEAT_TIMEOUT,
    retry_policy=WATCH_RETRY,
    cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL,
)
