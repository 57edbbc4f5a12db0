"""Sealed `env` values: a deployment's secrets (an HF_TOKEN, say) never sit in clear in Temporal.

The API seals each value of a spec's `env` before the spec goes to Temporal; the node opens them
inside the launch, just before the engine's environment is built. Everything else in the spec stays
readable in Temporal's UI and CLI (docs/security.md says why this, not a payload codec).

    sealed:v1:<key id>:<base64url(nonce || AES-256-GCM ciphertext and tag)>

- The key: BERTH_SECRET_KEY when set (a long random string; compose gives the API and the worker
  the same one), else $BERTH_HOME/secret-key, which `berth up` (or the API's first seal) creates
  with mode 0600. The AES key is derived from it with HKDF-SHA256; the key id is a hash of the
  derived key, only there to tell "sealed under another key" from "damaged".
- The nonce: 12 random bytes per seal (os.urandom), so the same value sealed twice differs.
- Associated data: the deployment's name and the variable's name: a sealed value opens only as the
  variable it was sealed for, in the deployment it was sealed for.

A value that is not sealed (a spec started straight from the Temporal CLI) is used as it is.
"""

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path


from berth.common.atomic_write import create_secret_once
from berth.settings import Settings

KEY_ENV = "BERTH_SECRET_KEY"
KEY_FILE = "secret-key"
SEALED_PREFIX = "sealed:v1:"
MIN_KEY_CHARS = 32
NONCE_BYTES = 12


class SealError(ValueError):
    """A sealed value that cannot be opened here; the message says why, never the value."""


class SealingKey:
    """The AES-256-GCM key derived from the operator's secret, and its public id."""

    def __init__(self, secret: str) -> None:
        secret = secret.strip()
        if len(secret) < MIN_KEY_CHARS:
            raise SealError(
                f"{KEY_ENV} is too short ({len(secret)} characters): use at least {MIN_KEY_CHARS} random "
                "characters, e.g. the output of `openssl rand -hex 32`"
            )
        self._secret = secret
        self._cipher = None
        self.id = hashlib.sha256(b"berth key id v1\0" + secret.encode()).hexdigest()[:8]

    @property
    def _aead(self):
        """AES-GCM under the key derived from the secret, made at first use: `cryptography` is
        imported only by a process that seals or opens (~6 MB that `berth up`, which only makes
        the key file, does not carry)."""
        if self._cipher is None:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF

            derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"berth env sealing v1")
            self._cipher = AESGCM(derived.derive(self._secret.encode()))
        return self._cipher

    def seal(self, deployment: str, name: str, value: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode(), _associated(deployment, name))
        return f"{SEALED_PREFIX}{self.id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, deployment: str, name: str, value: str) -> str:
        """The clear value of a sealed one; SealError (naming the variable, never a value) otherwise."""
        key_id, _, blob = value[len(SEALED_PREFIX):].partition(":")
        if key_id != self.id:
            raise SealError(
                f"env {name} was sealed under another secret key (id {key_id[:8]!r}, this node's is "
                f"{self.id!r}): give this node the API's {KEY_ENV} (or its $BERTH_HOME/{KEY_FILE}), "
                "or deploy again through this API"
            )
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.b64decode(blob.encode(), altchars=b"-_", validate=True)
            if len(raw) < NONCE_BYTES + 16:
                raise ValueError("too short")
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated(deployment, name)).decode()
        except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError):
            raise SealError(
                f"env {name}: the sealed value does not open: it was damaged, or sealed for another "
                "variable or deployment; set the variable again (retry with a patch, or deploy again)"
            ) from None


def _associated(deployment: str, name: str) -> bytes:
    return f"berth env v1\0{deployment}\0{name}".encode()


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


def key_path(settings: Settings) -> Path:
    return settings.home / KEY_FILE


def load_key(settings: Settings, env: Mapping[str, str] = os.environ) -> SealingKey | None:
    """BERTH_SECRET_KEY, else the key file's content, else None (no key on this machine yet)."""
    if env.get(KEY_ENV, "").strip():
        return SealingKey(env[KEY_ENV])
    try:
        secret = key_path(settings).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return SealingKey(secret) if secret else None


def ensure_key(settings: Settings, env: Mapping[str, str] = os.environ) -> SealingKey:
    """The key, creating $BERTH_HOME/secret-key (mode 0600) when there is none yet: written aside,
    then hard-linked into place, so a concurrent reader never sees it empty and two creators agree."""
    existing = load_key(settings, env)
    if existing is not None:
        return existing
    return SealingKey(create_secret_once(key_path(settings)))


def seal_env(key: SealingKey, deployment: str, env: Mapping[str, str]) -> dict[str, str]:
    """Every value sealed, whatever it looks like: the API takes values in clear, always."""
    return {name: key.seal(deployment, name, value) for name, value in env.items()}


def open_env(key: SealingKey | None, deployment: str, env: Mapping[str, str]) -> dict[str, str]:
    """The environment an engine gets: sealed values opened, the others as they are. SealError
    names the first variable that cannot be opened (with no key here: every sealed one)."""
    opened = {}
    for name, value in env.items():
        if not is_sealed(value):
            opened[name] = value
        elif key is None:
            raise SealError(
                f"env {name} is sealed, but this node has no secret key: give it the API's {KEY_ENV} "
                f"(or copy the API's $BERTH_HOME/{KEY_FILE} here, mode 0600)"
            )
        else:
            opened[name] = key.open(deployment, name, value)
    return opened
