"""FastAPI dependencies: the admin-token check, and the facade the routes share.

Every route of the API but /healthz takes the admin token only: an inference key is a 403 saying
so (it opens model endpoints, not the API), a missing or wrong token a 401.
"""

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from berth.api.auth_check import KEY_ON_ADMIN, MISSING, UNKNOWN_KEY, WRONG, Kind, identify
from berth.api.errors import ApiError
from berth.api.facade import Deployments
from berth.api.inference_keys import KeyStore

# auto_error=False: a missing token is our 401 in our error shape, not FastAPI's 403
bearer_scheme = HTTPBearer(auto_error=False, description="the admin token in $BERTH_HOME/api-token or BERTH_API_TOKEN")


async def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
) -> None:
    if credentials is None:
        raise ApiError(401, "unauthorized", MISSING, headers={"WWW-Authenticate": "Bearer"})
    state = request.app.state
    caller = identify(credentials.credentials, state.token, state.keys)
    if caller.kind is Kind.ADMIN:
        return
    if caller.kind is Kind.KEY:
        raise ApiError(403, "forbidden", KEY_ON_ADMIN)
    message = UNKNOWN_KEY + "; and the API takes the admin token only" if caller.kind is Kind.UNKNOWN_KEY else WRONG
    raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def deployments(request: Request) -> Deployments:
    return request.app.state.deployments


def keys(request: Request) -> KeyStore:
    return request.app.state.keys
