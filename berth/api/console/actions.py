"""The console's JSON routes under /ui/api: the live updates its script polls, and its actions
(deploy, stop, retry, plan). They call the facade directly, as the /v1 routes do, but answer only
to the session cookie (session.py), never to a bearer token.

Without a valid session every route is a 401. A POST must also be same-origin (Sec-Fetch-Site,
Origin) and carry the session's CSRF token in X-Berth-CSRF: a cross-site one is a 403. Errors
are the API's shape, `{"error": {"code", "message"}}`.

Scale posts `{"replicas": N}` to the facade's scale (the workflow's `scale` update, whose
validator's refusal comes back as a 400 with its reason).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from berth.api.console import session as sessions
from berth.api.console.views import detail_html, logs_answer, page_of_rows, rows_html, status_filter
from berth.api.errors import ApiError
from berth.api.facade import MAX_TAIL, Deployments
from berth.api.routes_engines import engines_report
from berth.api.routes_deployments import ScaleBody
from berth.api.routes_plan import PlanAnswer, PlanRequest, plan_report
from berth.domain.spec import DeploymentSpec, EngineName, SpecPatch


def require_session(request: Request) -> str:
    session = sessions.current_session(request)
    if session is None:
        raise ApiError(401, "unauthorized", "log in to the console first (/ui/login)")
    return session


def require_own_page(request: Request, session: str = Depends(require_session)) -> None:
    """A state-changing request from the console's own page: same origin, and its CSRF token."""
    if not sessions.same_origin(request):
        raise ApiError(403, "cross_site_refused", "refused: this request came from another site")
    if not sessions.csrf_ok(request, session, request.headers.get(sessions.CSRF_HEADER)):
        raise ApiError(403, "csrf_refused", "refused: the request lacks this session's CSRF token; reload the page")


reads = APIRouter(prefix="/ui/api", include_in_schema=False, dependencies=[Depends(require_session)])
changes = APIRouter(prefix="/ui/api", include_in_schema=False, dependencies=[Depends(require_own_page)])


def facade(request: Request) -> Deployments:
    return request.app.state.deployments


Facade = Annotated[Deployments, Depends(facade)]


# ---- live updates --------------------------------------------------------------------------------


@reads.get("/deployments")
async def table_rows(
    request: Request,
    status: Annotated[str | None, Query(max_length=32)] = None,
    page_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> dict:
    rows, next_token = await page_of_rows(request, status_filter(status), page_token)
    return {"html": rows_html(request, rows), "count": len(rows), "next_page_token": next_token}


@reads.get("/deployments/{name}")
async def deployment_detail(request: Request, name: str, facade: Facade) -> dict:
    state = await facade.get(name)
    return {
        "html": detail_html(request, state),
        "status": state.status.value,
        "suggested_context_size": state.error.suggested_context_size if state.error else None,
        "context_size": state.context_size,
    }


@reads.get("/deployments/{name}/logs")
async def deployment_logs(
    name: str,
    facade: Facade,
    tail: Annotated[int, Query(ge=1, le=MAX_TAIL)] = 500,
    offset: Annotated[int | None, Query(ge=0)] = None,
) -> dict:
    logs = await facade.logs(name, tail, offset)
    state = await facade.get(name) if logs.issues else None
    return logs_answer(logs, state)


@reads.get("/engines")
async def engine_for(
    model: Annotated[str, Query(min_length=1, max_length=4096)],
    engine: Annotated[EngineName, Query()] = "auto",
) -> dict:
    """Which engine the model would get here, and why (the /v1/engines logic)."""
    report = await asyncio.to_thread(engines_report, model, engine)
    return {
        "model": report.model.model_dump() if report.model else None,
        "selection": report.selection.model_dump() if report.selection else None,
    }


# ---- actions -------------------------------------------------------------------------------------


@changes.post("/plan", response_model=PlanAnswer)
async def plan(body: PlanRequest, request: Request) -> PlanAnswer:
    return await asyncio.to_thread(plan_report, body, request.app.state.settings)


@changes.post("/deploy", status_code=202)
async def deploy(spec: DeploymentSpec, facade: Facade) -> dict:
    state = await facade.deploy(spec)
    return {"name": state.name, "status": state.status.value, "url": f"/ui/deployments/{state.name}"}


@changes.post("/deployments/{name}/stop", status_code=202)
async def stop(name: str, facade: Facade) -> dict:
    state = await facade.stop(name)
    return {"name": name, "status": state.status.value}


@changes.post("/deployments/{name}/scale", status_code=202)
async def scale(name: str, body: ScaleBody, facade: Facade) -> dict:
    state = await facade.scale(name, body.replicas)
    return {"name": name, "status": state.status.value, "replicas": state.replicas}


@changes.post("/deployments/{name}/retry", status_code=202)
async def retry(name: str, facade: Facade, patch: SpecPatch | None = None) -> dict:
    state = await facade.retry(name, patch)
    return {"name": name, "status": state.status.value}
