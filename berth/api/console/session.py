"""The console's session: a cookie that only the admin token (or a one-time login code) earns, and
the checks every console request passes. Kept apart from berth.api.dependencies (the bearer check
of /v1): a browser never holds the token after logging in, only this cookie.

The cookie is `<expiry>.<nonce>.<signature>`, signed with a key derived from the API token: no
session table to lose when the API restarts, and a new token (a new $BERTH_HOME/api-token) ends
every session. HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
Path=/ui, Secure when the console is served over https.

A state-changing request (POST) must also come from the console's own pages: Sec-Fetch-Site, when
the browser sends it, is `same-origin`; Origin, when sent, is the console's own; and it carries the
CSRF token of its session (header X-Berth-CSRF, or the form field `csrf`), an HMAC of the cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from fastapi import Request

from berth.common.api_token import token_matches

COOKIE = "berth_console"
SESSION_S = 12 * 3600
CSRF_HEADER = "x-berth-csrf"
CSRF_FIELD = "csrf"
MAX_COOKIE_CHARS = 200


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), b"berth console session v1", hashlib.sha256).digest()


def _mac(token: str, text: str) -> str:
    digest = hmac.new(_key(token), text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_session(token: str, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + SESSION_S)
    body = f"{expires}.{secrets.token_urlsafe(12)}"
    return f"{body}.{_mac(token, 'session:' + body)}"


def session_valid(token: str, value: str | None, now: float | None = None) -> bool:
    if not value or len(value) > MAX_COOKIE_CHARS or value.count(".") != 2:
        return False
    body, _, signature = value.rpartition(".")
    if not hmac.compare_digest(signature.encode(), _mac(token, "session:" + body).encode()):
        return False
    try:
        expires = int(body.split(".", 1)[0])
    except ValueError:
        return False
    return (time.time() if now is None else now) < expires


def csrf_token(token: str, session: str) -> str:
    return _mac(token, "csrf:" + session)


def admin_token_matches(request: Request, presented: str | None) -> bool:
    """Only the admin token (the API's own) logs in; inference keys do not."""
    return token_matches((presented or "").strip(), request.app.state.token)


def current_session(request: Request) -> str | None:
    value = request.cookies.get(COOKIE)
    return value if session_valid(request.app.state.token, value) else None


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def same_origin(request: Request) -> bool:
    """Not sent by another site's page: Sec-Fetch-Site and Origin, when the browser sends them."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or origin == own_origin(request)


def csrf_ok(request: Request, session: str, presented: str | None) -> bool:
    expected = csrf_token(request.app.state.token, session)
    return bool(presented) and hmac.compare_digest(presented.encode(), expected.encode())


def set_session_cookie(response, request: Request, session: str) -> None:
    response.set_cookie(
        COOKIE,
        session,
        max_age=SESSION_S,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(response) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
