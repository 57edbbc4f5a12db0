"""/v1/deployments: a thin layer over the facade. Bodies are the domain's own models."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status
from pydantic import BaseModel, Field

from berth.api.dependencies import deployments, require_token
from berth.api.errors import ERROR_RESPONSES
from berth.api.facade import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_TAIL,
    DeploymentLogs,
    DeploymentPage,
    Deployments,
)
from berth.domain.spec import MAX_REPLICAS, DeploymentSpec, SpecPatch
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus

router = APIRouter(
    prefix="/v1/deployments",
    tags=["deployments"],
    dependencies=[Depends(require_token)],
    responses={code: ERROR_RESPONSES[code] for code in (400, 401, 403, 404, 503)},
)

Facade = Annotated[Deployments, Depends(deployments)]
# A deployment name is a DNS label: a longer one cannot name a deployment (400, naming the limit)
Name = Annotated[str, Path(max_length=63, description="the deployment's name, a DNS label")]
MAX_PAGE_TOKEN_CHARS = 4096


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentState,
    responses={code: ERROR_RESPONSES[code] for code in (409, 413)},
    summary="Deploy a model",
)
async def deploy(spec: DeploymentSpec, facade: Facade) -> DeploymentState:
    """Start serving `spec.model` as `spec.name`. Answers at once (202) with the state, REQUESTED;
    follow it with GET /v1/deployments/{name}. A name that is deployed and not STOPPED is a 409."""
    return await facade.deploy(spec)


@router.get("", response_model=DeploymentPage, summary="List deployments, a page at a time")
async def list_deployments(
    facade: Facade,
    status: Annotated[DeploymentStatus | None, Query(description="only deployments in this status")] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="at most this many rows")] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[
        str | None,
        Query(max_length=MAX_PAGE_TOKEN_CHARS, description="`next_page_token` of the previous page"),
    ] = None,
) -> DeploymentPage:
    """From Temporal's visibility store (search attributes), which trails changes by about a second.
    Running deployments first, newest first, then stopped ones. Follow `next_page_token` until it is
    null; a page may hold fewer than `page_size` rows (older runs of a redeployed name are left out)."""
    return await facade.list(status, page_size, page_token)


@router.get("/{name}", response_model=DeploymentState, summary="A deployment's state")
async def get_deployment(name: Name, facade: Facade) -> DeploymentState:
    return await facade.get(name)


@router.post(
    "/{name}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentState,
    summary="Stop a deployment",
)
async def stop_deployment(name: Name, facade: Facade) -> DeploymentState:
    """Stops the engine and removes its route and port; the status becomes STOPPED moments later.
    Stopping a stopped deployment is not an error."""
    return await facade.stop(name)


@router.post(
    "/{name}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentState,
    responses={code: ERROR_RESPONSES[code] for code in (409, 413)},
    summary="Deploy again, optionally with changes",
)
async def retry_deployment(name: Name, facade: Facade, patch: SpecPatch | None = None) -> DeploymentState:
    """Deploy again now (after FAILED, or to apply a change), e.g. with `{"context_size": 2048}`.
    The patch is checked against the current spec first: a bad one is a 400 and changes nothing."""
    return await facade.retry(name, patch)


class ScaleBody(BaseModel):
    replicas: int = Field(ge=0, le=MAX_REPLICAS, description=f"instances to run, 0 to {MAX_REPLICAS}")


@router.post(
    "/{name}/scale",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentState,
    responses={code: ERROR_RESPONSES[code] for code in (409, 413)},
    summary="Run this many instances",
)
async def scale_deployment(name: Name, body: ScaleBody, facade: Facade) -> DeploymentState:
    """Run `replicas` instances behind the deployment's route (0: keep the deployment, run nothing).
    Answers once the workflow has taken it (202); `ready_replicas` in the state says when they serve.
    A count the node's memory cannot hold is a 400 with the per-instance numbers, and changes
    nothing. Scaling down drains instances that do not serve first, then the newest."""
    return await facade.scale(name, body.replicas)


@router.get("/{name}/logs", response_model=DeploymentLogs, summary="The engine's log")
async def deployment_logs(
    name: Name,
    facade: Facade,
    tail: Annotated[int, Query(ge=1, le=MAX_TAIL, description="how many of the last lines")] = 100,
    offset: Annotated[int | None, Query(ge=0, description="only lines after this byte offset (to follow)")] = None,
    instance: Annotated[
        str | None, Query(max_length=80, description="one instance's log; default: every instance's, lines tagged")
    ] = None,
) -> DeploymentLogs:
    """The last lines of the engine log, and those of them that match a known failure pattern. Each
    instance has its own log: `instance` names one; without it, a deployment of several instances
    answers with the last lines of each, tagged `[<instance id>] `."""
    return await facade.logs(name, tail, offset, instance)
