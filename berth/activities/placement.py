"""The control plane's local activity check_spec (does berth run this spec at all), run by the worker
that runs the workflow task (queue `berth`). Which node an instance runs on is the cluster's answer
(berth.activities.cluster.reserve_instance)."""

import os

from temporalio import activity

from berth.domain.errors import ErrorCode, Failure
from berth.domain.pipeline import CHECK_SPEC, SpecCheck
from berth.engines.engine_args import spec_refusal


@activity.defn(name=CHECK_SPEC)
async def check_spec(request: SpecCheck) -> Failure | None:
    """The API's rules (env policy, engine flag tables) applied by the workflow itself, so that a
    spec started or retried straight through Temporal gets the same refusal, before anything
    touches a node. Under this worker's BERTH_ALLOW_UNSAFE_ENV / BERTH_ALLOW_UNSAFE_ENGINE_ARGS;
    the verdict is the result, recorded in the history (a replay does not judge again): None, or
    an ENGINE_UNAVAILABLE failure (the deployment is then FAILED) naming each refused variable and flag."""
    refusal = spec_refusal(request.engine, request.engine_args, dict.fromkeys(request.env_names, ""), os.environ)
    if refusal:
        return Failure(code=ErrorCode.ENGINE_UNAVAILABLE, message=f"berth refuses this spec: {refusal}")
    return None
