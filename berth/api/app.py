"""The REST API: FastAPI over the Temporal facade. `create_app` builds it; berth.api.server serves it."""

from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from berth.api import routes_deployments, routes_engines, routes_keys, routes_metrics, routes_nodes, routes_plan
from berth.api.auth_check import AuthCheck, check_answer, identify
from berth.api.console import install_console
from berth.api.dependencies import bearer_scheme
from berth.common.api_token import ensure_api_token
from berth.api.errors import ApiError, ErrorBody, install_error_handlers
from berth.api.facade import Deployments
from berth.api.facade.nodes import Nodes
from berth.api.inference_keys import KeyStore
from berth.api.limits import BodySizeLimit, RequestLimits
from berth.domain.spec import NAME_PATTERN
from berth.settings import Settings

DESCRIPTION = """Deploy models and follow them. Every deployment is the Temporal workflow
`deployment-<name>`; this API starts, queries and signals it.

Every route but `/healthz` needs `Authorization: Bearer <admin token>`, the token being in
`$BERTH_HOME/api-token` (created by `berth up`) or `BERTH_API_TOKEN`. Inference keys
(`/v1/keys`) open model endpoints through the gateway and nothing here: one sent to a route of
this API is a 403. Errors are `{"error": {"code": ..., "message": ...}}`. The web console at
`/ui` is served here too; it answers to its own session cookie, and its routes are not part of
this schema.

A method a path does not take is a 405 in that shape, with an `Allow` header naming the methods
it takes. Limits: a request path of at most 1024 characters, a query string of at most 8192, a
query value of at most 4096 (the documented `maxLength` of a parameter, where lower, wins), a
deployment name of at most 63 (a DNS label), a request body of at most 1 MiB (413); over one of
them is a 400 that names it."""


class Health(BaseModel):
    status: str = "ok"


class AuthCheckAnswer(BaseModel):
    authenticated: bool = True


def create_app(settings: Settings, facade: Deployments | None = None, token: str | None = None) -> FastAPI:
    app = FastAPI(title="berth", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.token = token or ensure_api_token(settings)
    app.state.deployments = facade or Deployments(settings)
    app.state.nodes = Nodes(app.state.deployments)  # the cluster workflow, through the same client
    app.state.keys = KeyStore(settings.home)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RequestLimits)
    # outermost: the gateway's check reads no body and one exact path; nothing else runs before it
    app.add_middleware(AuthCheck, state=app.state)
    app.include_router(routes_deployments.router)
    app.include_router(routes_engines.router)
    app.include_router(routes_metrics.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_plan.router)
    app.include_router(routes_nodes.router)
    install_console(app)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="The API process is up (no token)")
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/v1/auth/check",
        response_model=AuthCheckAnswer,
        responses={
            401: {"model": ErrorBody, "description": "no token, a wrong one, or an unknown or revoked inference key"},
            403: {"model": ErrorBody, "description": "an inference key that does not open the deployment of X-Forwarded-Uri"},
            503: {"model": ErrorBody, "description": "the keys file is damaged: no inference key is taken"},
        },
        tags=["auth"],
        summary="Whether a request may pass the gateway (its forwardAuth asks this)",
    )
    async def auth_check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
        x_forwarded_uri: Annotated[str | None, Header(description="set by the gateway: the request's path")] = None,
    ) -> AuthCheckAnswer:
        """200 for the admin token; 200 for an inference key that opens the deployment named by
        `X-Forwarded-Uri` (`/models/<name>/...`, which the gateway sets); 403 for a key that does
        not; 401 for no token, a wrong one, or an unknown or revoked key. Answered by a small
        middleware before this route is reached (berth.api.auth_check).

        GET only: Traefik's forwardAuth asks with GET whatever the method of the request it
        guards (it would forward that method only with `preserveRequestMethod`, which berth's
        gateway configuration does not set), so a chat POST through the gateway is checked here
        with a GET. Any other method is a 405."""
        state = request.app.state  # reached only without the middleware: the same answer, slower
        caller = identify(credentials.credentials if credentials else None, state.token, state.keys)
        status, code, message = check_answer(caller, x_forwarded_uri)
        if status != 200:
            raise ApiError(status, code, message)
        return AuthCheckAnswer()

    _document_400_not_422(app)
    return app


def _document_400_not_422(app: FastAPI) -> None:
    """Invalid input is a 400 in our error shape (errors.py): drop FastAPI's default 422 from /docs;
    and document a deployment name's form (a DNS label)."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()  # built once, then cached by FastAPI
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        # what DeploymentSpec's validator checks of a name, said where a client reads it
        name = schema.get("components", {}).get("schemas", {}).get("DeploymentSpec", {}).get("properties", {}).get("name")
        if name is not None:
            name.update(pattern=NAME_PATTERN.pattern, maxLength=63)
        return schema

    app.openapi = openapi
