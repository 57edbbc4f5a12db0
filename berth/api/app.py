"""The REST API: FastAPI over the Temporal facade. `create_app` builds it; berth.api.server serves it."""

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from berth.api import routes_deployments, routes_engines, routes_plan
from berth.api.console import install_console
from berth.common.api_token import ensure_api_token
from berth.api.dependencies import require_token
from berth.api.errors import ERROR_RESPONSES, install_error_handlers
from berth.api.facade import Deployments
from berth.api.limits import BodySizeLimit, RequestLimits
from berth.domain.spec import NAME_PATTERN
from berth.settings import Settings

DESCRIPTION = """Deploy models and follow them. Every deployment is the Temporal workflow
`deployment-<name>`; this API starts, queries and signals it.

Every route but `/healthz` needs `Authorization: Bearer <token>`, the token being in
`$BERTH_HOME/api-token` (created by `berth up`) or `BERTH_API_TOKEN`. Errors are
`{"error": {"code": ..., "message": ...}}`. The web console at `/ui` is served here too; it
answers to its own session cookie, and its routes are not part of this schema.

A method a path does not take is a 405 in that shape, with an `Allow` header naming the methods
it takes. Limits: a request path of at most 1024 characters, a query string of at most 8192, a
query value of at most 4096 (the documented `maxLength` of a parameter, where lower, wins), a
deployment name of at most 63 (a DNS label), a request body of at most 1 MiB (413); over one of
them is a 400 that names it."""


class Health(BaseModel):
    status: str = "ok"


class AuthCheck(BaseModel):
    authenticated: bool = True


def create_app(settings: Settings, facade: Deployments | None = None, token: str | None = None) -> FastAPI:
    app = FastAPI(title="berth", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.token = token or ensure_api_token(settings)
    app.state.deployments = facade or Deployments(settings)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RequestLimits)
    app.include_router(routes_deployments.router)
    app.include_router(routes_engines.router)
    app.include_router(routes_plan.router)
    install_console(app)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="The API process is up (no token)")
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/v1/auth/check",
        response_model=AuthCheck,
        dependencies=[Depends(require_token)],
        responses={401: ERROR_RESPONSES[401]},
        tags=["auth"],
        summary="200 with a valid bearer token, 401 without (the gateway's forwardAuth asks this)",
    )
    async def auth_check() -> AuthCheck:
        """GET only: Traefik's forwardAuth asks with GET whatever the method of the request it
        guards (it would forward that method only with `preserveRequestMethod`, which berth's
        gateway configuration does not set), so a chat POST through the gateway is checked here
        with a GET. Any other method is a 405."""
        return AuthCheck()

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
