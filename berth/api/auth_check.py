"""Who is calling: the admin token, an inference key, or neither. Shared by the API's admin routes
(berth.api.dependencies: the admin token only) and by GET /v1/auth/check, which the gateway's
forwardAuth asks before a model request that did not come with the exact admin token.

/v1/auth/check is answered here, in a small ASGI middleware in front of FastAPI's routing, because
the gateway asks it on every such model request (benchmark P4 times it): a header scan, a dict
lookup by key id, one SHA-256 and a constant-time comparison. FastAPI keeps the route declared (its
schema, its 405 for other methods); it only answers when this middleware is not installed.

What Traefik (3.7) sends the check: the request's `Authorization` (the middleware's
`authRequestHeaders`: nothing else of the client's), and `X-Forwarded-Uri`, the request's path and
query as the client sent them, before the route strips `/models/<name>` (the forwardAuth
middleware comes first on the route); with `trustForwardHeader` off (berth's setting) a client's
own X-Forwarded-Uri is replaced, never passed on. The deployment a key must open is read from it.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api.inference_keys import KeyRecord, KeyStore, KeyStoreError, key_id_of
from berth.common.api_token import TOKEN_ENV, bearer_token, token_matches
from berth.domain.spec import NAME_PATTERN

CHECK_PATH = "/v1/auth/check"
MODELS_PREFIX = "/models/"

MISSING = (f"missing bearer token: send `Authorization: Bearer <token>` with the token from $BERTH_HOME/api-token "
           f"(or {TOKEN_ENV}), or, for model endpoints, an inference key (`berth keys create`)")
WRONG = (f"wrong bearer token: use the one in $BERTH_HOME/api-token (or {TOKEN_ENV}) of the machine that runs "
         "`berth up`, or, for model endpoints, an inference key")
UNKNOWN_KEY = "unknown or revoked inference key: `berth keys ls` lists the keys that work; `berth keys create` makes one"
KEY_ON_ADMIN = (f"this is an inference key: it opens model endpoints (/models/<name>/...) only; the API needs the "
                f"admin token from $BERTH_HOME/api-token (or {TOKEN_ENV})")


class Kind(Enum):
    NONE = "none"  # no bearer token
    ADMIN = "admin"
    KEY = "key"  # a valid inference key
    UNKNOWN_KEY = "unknown_key"  # shaped like a key; none such (or revoked)
    WRONG = "wrong"
    KEYS_DAMAGED = "keys_damaged"


@dataclass(frozen=True)
class Caller:
    kind: Kind
    key: KeyRecord | None = None
    problem: str = ""  # KEYS_DAMAGED: what is wrong with the keys file


def identify(token: str | None, admin_token: str, keys: KeyStore) -> Caller:
    if not token:
        return Caller(Kind.NONE)
    if token_matches(token, admin_token):
        return Caller(Kind.ADMIN)
    if key_id_of(token) is None:
        return Caller(Kind.WRONG)
    try:
        record = keys.verify(token)
    except KeyStoreError as error:
        return Caller(Kind.KEYS_DAMAGED, problem=str(error))
    return Caller(Kind.KEY, record) if record is not None else Caller(Kind.UNKNOWN_KEY)


def deployment_of(forwarded_uri: str | None) -> str | None:
    """The deployment a gateway request is for, from its X-Forwarded-Uri (`/models/<name>/...`):
    the path decoded once, as Traefik's router reads it; None when it names no deployment. A path
    with a `.` or `..` segment (raw or encoded) names none: Traefik cleans such paths before it
    routes, so one that reaches here is read as no deployment rather than guessed at."""
    if not forwarded_uri:
        return None
    path = unquote(forwarded_uri.split("?", 1)[0].split("#", 1)[0])
    if not path.startswith(MODELS_PREFIX):
        return None
    segments = path[len(MODELS_PREFIX):].split("/")
    if len(segments) < 2 or any(segment in (".", "..") for segment in segments):
        return None  # `/models/<name>` alone is not under the route's prefix `/models/<name>/`
    return segments[0] if NAME_PATTERN.match(segments[0]) else None


def check_answer(caller: Caller, forwarded_uri: str | None) -> tuple[int, str, str]:
    """(status, error code, message) of /v1/auth/check for this caller; 200 lets the request pass."""
    kind = caller.kind
    if kind is Kind.ADMIN:
        return 200, "", ""
    if kind is Kind.KEY:
        deployment = deployment_of(forwarded_uri)
        if caller.key.opens(deployment):
            return 200, "", ""
        opens = ", ".join(caller.key.deployments or ())
        if deployment is None:
            return 403, "forbidden", (f"this inference key opens only the model endpoints of {opens}, "
                                      "under /models/<name>/ through the gateway")
        return 403, "forbidden", f"this inference key does not open {deployment}; it opens {opens}"
    if kind is Kind.KEYS_DAMAGED:
        return 503, "unavailable", caller.problem
    return 401, "unauthorized", {Kind.NONE: MISSING, Kind.UNKNOWN_KEY: UNKNOWN_KEY}.get(kind, WRONG)


_OK_BODY = b'{"authenticated":true}'


def _headers(body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]


class AuthCheck:
    """Pure ASGI middleware: answers GET /v1/auth/check; anything else goes on to the app."""

    def __init__(self, app: ASGIApp, state):
        self.app = app
        self.state = state  # the app's state: `token` (admin) and `keys` (KeyStore), read at each request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CHECK_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        authorization = forwarded_uri = None
        several = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                several = authorization is not None
                authorization = value.decode("latin-1")
            elif name == b"x-forwarded-uri":
                forwarded_uri = value.decode("latin-1")
        if several:  # one credential per request: which one counted would be a guess
            caller = Caller(Kind.WRONG)
        else:
            caller = identify(bearer_token(authorization), self.state.token, self.state.keys)
        status, code, message = check_answer(caller, forwarded_uri)
        extra = []
        if status == 200:
            body = _OK_BODY
        else:
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            if status == 401:
                extra = [(b"www-authenticate", b"Bearer" if caller.kind is Kind.NONE else b'Bearer error="invalid_token"')]
        await send({"type": "http.response.start", "status": status, "headers": _headers(body, extra)})
        await send({"type": "http.response.body", "body": body})
