"""The REST API: FastAPI over the Temporal facade. `create_app` builds it; berth.api.server serves it."""

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from berth.api import routes_deployments, routes_engines
from berth.common.api_token import ensure_api_token
from berth.api.dependencies import require_token
from berth.api.errors import ERROR_RESPONSES, install_error_handlers
from berth.api.facade import Deployments
from berth.api.limits import BodySizeLimit
from berth.settings import Settings

DESCRIPTION = """Deploy models and follow them. Every deployment is the Temporal workflow
`deployment-<name>`; this API starts, queries and signals it.

Every route but `/healthz` needs `Authorization: Bearer <token>`, the token being in
`$BERTH_HOME/api-token` (created by `berth up`) or `BERTH_API_TOKEN`. Errors are
`{"error": {"code": ..., "message": ...}}`."""


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
    app.include_router(routes_deployments.router)
    app.include_router(routes_engines.router)

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
        return AuthCheck()

    # forwardAuth asks with GET; a proxy that keeps the original method gets the same answer
    app.add_api_route(
        "/v1/auth/check",
        auth_check,
        methods=["HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        dependencies=[Depends(require_token)],
        include_in_schema=False,
    )

    _document_400_not_422(app)
    return app


def _document_400_not_422(app: FastAPI) -> None:
    """Invalid input is a 400 in our error shape (errors.py): drop FastAPI's default 422 from /docs."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()  # built once, then cached by FastAPI
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        return schema

    app.openapi = openapi
