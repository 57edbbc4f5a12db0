"""Caps on what a request may carry, each refused in the API's error shape with the limit named:
the body (1 MiB: 413, before it is read whole, declared size or not), and the path and query
(400, before routing: no route, validator or file system call ever sees an over-long value).

Parameters document lower limits of their own where they have one (`maxLength` in the OpenAPI
schema: a deployment name 63, a model reference 4096); these are the ceilings for everything.
"""

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.api.errors import error_response

MAX_BODY_BYTES = 1024 * 1024
# Well under what the HTTP server itself takes in a request line (h11: 16 KiB for the head).
MAX_PATH_CHARS = 1024
MAX_QUERY_CHARS = 8192
MAX_QUERY_VALUE_CHARS = 4096


def request_limit_problem(scope: Scope) -> str | None:
    """What is over a limit in the request's path or query, in words that name the limit."""
    path = scope.get("path", "")
    if len(path) > MAX_PATH_CHARS:
        return f"the request path is {len(path)} characters long; at most {MAX_PATH_CHARS} are taken"
    query = scope.get("query_string", b"")
    if len(query) > MAX_QUERY_CHARS:
        return f"the query string is {len(query)} characters long; at most {MAX_QUERY_CHARS} are taken"
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if len(value) > MAX_QUERY_VALUE_CHARS or len(key) > MAX_QUERY_VALUE_CHARS:
            name = key if len(key) <= 64 else key[:61] + "..."
            return (
                f"query parameter {name}: {max(len(key), len(value))} characters; "
                f"a query name or value takes at most {MAX_QUERY_VALUE_CHARS}"
            )
    return None


class RequestLimits:
    """Pure ASGI middleware: 400 for a path, query string or query value over its limit."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (problem := request_limit_problem(scope)) is not None:
            await error_response(400, "invalid_request", problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Pure ASGI middleware: 413 for a Content-Length over the cap, and for a streamed (chunked)
    body as soon as it passes the cap."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not refused:
                    refused = True
                    if not started:
                        await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "body_too_large",
            f"the request body is over {self.max_bytes // 1024 // 1024} MiB; a deployment spec is a few "
            "hundred bytes: send model files by path or URL, not in the request",
        )
        await response(scope, receive, send)
