"""FastAPI dependencies: the bearer-token check, and the facade the routes share."""

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from berth.common.api_token import TOKEN_ENV, token_matches
from berth.api.errors import ApiError
from berth.api.facade import Deployments

# auto_error=False: a missing token is our 401 in our error shape, not FastAPI's 403
_bearer = HTTPBearer(auto_error=False, description="the token in $BERTH_HOME/api-token or BERTH_API_TOKEN")


async def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing bearer token: send `Authorization: Bearer <token>` with the token from "
            f"$BERTH_HOME/api-token (or {TOKEN_ENV})",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(credentials.credentials, request.app.state.token):
        raise ApiError(
            401,
            "unauthorized",
            f"wrong bearer token: use the one in $BERTH_HOME/api-token (or {TOKEN_ENV}) of the machine "
            "that runs `berth up`",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def deployments(request: Request) -> Deployments:
    return request.app.state.deployments
