"""The API token: where it comes from, how it is created, how a presented token is checked.

The token is BERTH_API_TOKEN when set, else the content of $BERTH_HOME/api-token, which the first
`berth up` creates (mode 0600). The REST API, the `berth` CLI and (through the API's
/v1/auth/check) the gateway all use this one token. No FastAPI here: the CLI imports this module.
"""

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from berth.common.atomic_write import create_secret_once
from berth.settings import Settings

TOKEN_ENV = "BERTH_API_TOKEN"
TOKEN_FILE = "api-token"


def token_path(settings: Settings) -> Path:
    return settings.home / TOKEN_FILE


def load_api_token(settings: Settings, env: Mapping[str, str] = os.environ) -> str | None:
    """BERTH_API_TOKEN, else the token file's content, else None (no `berth up` has run here)."""
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    try:
        return token_path(settings).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def ensure_api_token(settings: Settings, env: Mapping[str, str] = os.environ) -> str:
    """The token, creating $BERTH_HOME/api-token (mode 0600) when there is none yet (at once with
    its content: berth.common.atomic_write.create_secret_once)."""
    existing = load_api_token(settings, env)
    if existing:
        return existing
    return create_secret_once(token_path(settings)).strip()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison: a wrong token takes as long to refuse as a nearly right one."""
    if not presented or not expected:
        return False
    return secrets.compare_digest(presented.encode(), expected.encode())
