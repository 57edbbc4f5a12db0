"""Every error the API answers has one shape, `{"error": {"code": ..., "message": ...}}`, and a message
that says what to change. Nothing else (no traceback, no framework default) reaches a client."""

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from berth.api.facade.errors import BadRequest, Conflict, DeploymentsError, NotFound, Unavailable, describe_problem

log = logging.getLogger("berth.api")

STATUS_OF = {BadRequest: 400, NotFound: 404, Conflict: 409, Unavailable: 503}
HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# For the OpenAPI page: what each route may answer besides success.
ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "invalid input: the message names each field and what to change"),
        (401, "missing or wrong bearer token"),
        (403, "an inference key: it opens model endpoints only, the API takes the admin token"),
        (404, "no deployment of that name"),
        (409, "a deployment of that name exists and is not stopped"),
        (413, "request body over 1 MiB"),
        (503, "Temporal or the berth worker does not answer"),
    )
}


class ApiError(Exception):
    """An error raised by the API layer itself (auth, limits)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def request_validation_message(errors: list[dict]) -> tuple[str, str]:
    """(code, message) for FastAPI's validation errors: malformed JSON, unknown or bad fields."""
    problems = []
    for error in errors:
        kind, loc = error.get("type", ""), [str(part) for part in error.get("loc", ())]
        where, field = (loc[0], ".".join(loc[1:])) if loc else ("", "")
        if kind == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "JSON decode error")
            return "malformed_json", (
                f"the request body is not valid JSON ({reason}, at character {loc[-1] if len(loc) > 1 else 0}): "
                "send one JSON object with Content-Type: application/json"
            )
        if where == "body" and not field and kind in ("missing", "model_attributes_type", "dict_type"):
            problems.append(
                "the request body must be one JSON object, sent with Content-Type: application/json"
            )
            continue
        label = {"query": "query parameter ", "path": "path parameter ", "header": "header "}.get(where, "")
        problems.append(describe_problem(error, f"{label}{field}" if field else ""))
    return "invalid_request", "; ".join(problems) or "invalid request"


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI schema gives the request's path (Starlette's own 405 names only those
    of the first route that matched it: GET on /v1/deployments, not its POST)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        parts = re.split(r"(\{[^/}]+\})", template)
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DeploymentsError)
    async def _deployments_error(request: Request, error: DeploymentsError) -> JSONResponse:
        return error_response(STATUS_OF.get(type(error), 400), error.code, error.message)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        code, message = request_validation_message(list(error.errors()))
        return error_response(400, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}; the routes are listed at /docs"
        elif error.status_code == 405:
            allow = ", ".join(allowed_methods(request)) or (error.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; it takes {allow} (see /docs)"
            return error_response(405, HTTP_CODES[405], message, {"Allow": allow})
        else:
            message = str(error.detail)
        code = HTTP_CODES.get(error.status_code, "http_error")
        return error_response(error.status_code, code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal", "berth hit an unexpected error; the API log ($BERTH_HOME/logs/api.log) has the details"
        )
