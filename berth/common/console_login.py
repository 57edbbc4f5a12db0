"""One-time login codes for the web console: `berth up` (and `berth ui`) make one and print a link
`<api>/ui/login?token=<code>`; the API's console accepts each code once, within CODE_TTL_S, and
answers with a session cookie. The admin token itself never travels in a URL.

The two are separate processes on one machine, so the code is a file: $BERTH_HOME/console-login/
holds one file per code (mode 0600), named by the code's SHA-256 (the code itself is on no disk),
holding its expiry. Consuming a code deletes its file; of two requests racing with one code, only
the one whose unlink succeeds logs in.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path

from berth.settings import Settings

LOGIN_DIR = "console-login"
CODE_TTL_S = 24 * 3600
CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{20,128}")


def login_dir(settings: Settings) -> Path:
    return settings.home / LOGIN_DIR


def _file_of(settings: Settings, code: str) -> Path:
    return login_dir(settings) / hashlib.sha256(code.encode()).hexdigest()


def issue_login_code(settings: Settings, ttl_s: float = CODE_TTL_S, now: float | None = None) -> str:
    """A new one-time code, good for `ttl_s` seconds; expired codes' files are removed."""
    now = time.time() if now is None else now
    folder = login_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_expired(folder, now)
    code = secrets.token_urlsafe(24)
    fd = os.open(_file_of(settings, code), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{now + ttl_s:.0f}\n")
    return code


def consume_login_code(settings: Settings, code: str | None, now: float | None = None) -> bool:
    """True once for a code that was issued and has not expired; False for anything else."""
    if not code or CODE_PATTERN.fullmatch(code) is None:
        return False
    path = _file_of(settings, code)
    try:
        expires = float(path.read_text().strip() or 0)
        path.unlink()  # only one consumer's unlink succeeds
    except (OSError, ValueError):
        return False
    return (time.time() if now is None else now) < expires


def login_link(api_url: str, code: str) -> str:
    return f"{api_url.rstrip('/')}/ui/login?token={code}"


def _remove_expired(folder: Path, now: float) -> None:
    for path in folder.iterdir():
        try:
            if float(path.read_text().strip() or 0) <= now:
                path.unlink()
        except (OSError, ValueError):
            continue
