"""The console's pages: login, the deployments table, deploy, a deployment, its logs. Server-rendered
(Jinja2, autoescaped); console.js keeps them live through the JSON routes of actions.py.

Without a valid session cookie every page answers 303 to /ui/login. Every page is sent with a
Content-Security-Policy that allows only the console's own script and style, no framing, and no
referrer (the login link's code never leaves in a Referer header).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from berth.api.console import session as sessions
from berth.api.console.views import (
    PAGE_SIZE,
    TEMPLATES,
    detail_view,
    page_of_rows,
    status_filter,
    temporal_ui_url,
)
from berth.api.facade import DeploymentsError, NotFound
from berth.common.console_login import consume_login_code
from berth.domain.spec import MAX_CONTEXT_SIZE
from berth.domain.status import DeploymentStatus
from berth.models.presets import PRESETS

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
LOGIN = "/ui/login"
HOME = "/ui/deployments"

router = APIRouter(prefix="/ui", include_in_schema=False)


def render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    session = sessions.current_session(request)
    csrf = sessions.csrf_token(request.app.state.token, session) if session else ""
    response = TEMPLATES.TemplateResponse(
        request, template, {"csrf": csrf, "logged_in": session is not None, **context}, status_code=status_code
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def logged_in(request: Request) -> bool:
    return sessions.current_session(request) is not None


# ---- login ---------------------------------------------------------------------------------------


@router.get("")
@router.get("/")
async def root(request: Request) -> Response:
    return redirect(HOME if logged_in(request) else LOGIN)


@router.get("/login")
async def login_page(request: Request, token: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    """The form; with `?token=CODE` (the link `berth up` prints) the one-time code is exchanged for
    the session cookie and the browser is sent on to a URL without it."""
    if token is not None:
        if consume_login_code(request.app.state.settings, token):
            return _logged_in_response(request)
        return render(
            request, "login.html", 401,
            error="This login link was used already or has expired. Run `berth ui` for a new one, or paste the API token.",
        )
    if logged_in(request):
        return redirect(HOME)
    return render(request, "login.html")


async def form_fields(request: Request) -> dict[str, str]:
    """An url-encoded form's fields (first value of each); {} for any other body."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        return {}
    try:
        fields = parse_qs(text, max_num_fields=20)
    except ValueError:  # more fields than any console form has
        return {}
    return {key: values[0] for key, values in fields.items()}


@router.post("/login")
async def login(request: Request) -> Response:
    token = (await form_fields(request)).get("token", "")[:512]
    if not sessions.same_origin(request):
        return render(request, "login.html", 403, error="Refused: this login came from another site.")
    if not sessions.admin_token_matches(request, token):
        return render(
            request, "login.html", 401,
            error="That is not the API token. It is in $BERTH_HOME/api-token on the machine that runs `berth up`.",
        )
    return _logged_in_response(request)


def _logged_in_response(request: Request) -> Response:
    response = redirect(HOME)
    sessions.set_session_cookie(response, request, sessions.new_session(request.app.state.token))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    csrf = (await form_fields(request)).get(sessions.CSRF_FIELD, "")
    session = sessions.current_session(request)
    if session is None or not sessions.same_origin(request) or not sessions.csrf_ok(request, session, csrf):
        return render(request, "login.html", 403, error="Refused: log out from the console's own page.")
    response = redirect(LOGIN)
    sessions.clear_session_cookie(response)
    return response


# ---- pages ---------------------------------------------------------------------------------------


@router.get("/deployments")
async def deployments_page(
    request: Request,
    status: Annotated[str | None, Query(max_length=32)] = None,
    page_token: Annotated[str | None, Query(max_length=4096)] = None,
) -> Response:
    if not logged_in(request):
        return redirect(LOGIN)
    chosen = status_filter(status)
    error, rows, next_token = None, [], None
    try:
        rows, next_token = await page_of_rows(request, chosen, page_token)
    except DeploymentsError as failed:
        error = failed.message
    return render(
        request, "deployments.html",
        rows=rows, next_page_token=next_token, status=chosen.value if chosen else "",
        statuses=[s.value for s in DeploymentStatus], page_token=page_token or "", error=error,
        page_size=PAGE_SIZE,
    )


@router.get("/deploy")
async def deploy_page(request: Request) -> Response:
    if not logged_in(request):
        return redirect(LOGIN)
    return render(request, "deploy.html", presets=list(PRESETS.values()), max_context=MAX_CONTEXT_SIZE)


@router.get("/deployments/{name}")
async def deployment_page(request: Request, name: str) -> Response:
    if not logged_in(request):
        return redirect(LOGIN)
    state = await _state_or_page(request, name)
    if isinstance(state, Response):
        return state
    return render(
        request, "deployment.html",
        d=detail_view(state), state=state, temporal_url=temporal_ui_url(request.app.state.settings, name),
    )


@router.get("/deployments/{name}/logs")
async def logs_page(request: Request, name: str) -> Response:
    if not logged_in(request):
        return redirect(LOGIN)
    state = await _state_or_page(request, name)
    if isinstance(state, Response):
        return state
    return render(request, "logs.html", name=name, state=state)


async def _state_or_page(request: Request, name: str):
    """The deployment's state, or the page that says why there is none (404, or 503 when Temporal
    does not answer)."""
    try:
        return await request.app.state.deployments.get(name)
    except NotFound as missing:
        return render(request, "missing.html", 404, message=missing.message)
    except DeploymentsError as failed:
        return render(request, "missing.html", 503, message=failed.message)

