"""Inference keys: credentials that open model endpoints (`/models/<name>/...` through the gateway)
and nothing else. The admin token (berth.common.api_token) drives the API; a key never does.

A key's text is `bik_<id>_<secret>`: `id` is 12 random hex digits that name the key (`berth keys
ls`, `berth keys revoke ID`) and find its record with one dict lookup; `secret` is 256 random bits
(43 URL-safe characters). berth keeps only the SHA-256 of the whole key, in
$BERTH_HOME/inference-keys.json (mode 0600, replaced atomically), with the key's name, the
deployments it opens (none named: all of them), when it was made and its last 4 characters.

Why SHA-256 and no slow KDF (bcrypt, scrypt, argon2): a slow KDF makes each guess of a *low-entropy*
secret (a password) expensive for someone who stole the hashes. A key here is 256 random bits: no
guessing succeeds, whatever the hash costs, so a fast hash loses nothing; and the gateway checks a
key on every model request, where a KDF's 50-100 ms would be the whole latency budget many times
over. The presented key's hash is compared with the stored one in constant time.

The file is the truth: a process that shares the home (a second API) sees a change at its next
check (each check stats the file and reloads it when it was replaced), so a revoked key stops
opening anything at once in the process that revoked it and at the next request everywhere else.
A damaged file refuses every key (KeyStoreError, with the file named) until it is fixed or removed;
the admin token keeps working.
"""

import fcntl
import hashlib
import json
import os
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from berth.common.atomic_write import write_atomically
from berth.domain.spec import NAME_PATTERN

KEYS_FILE = "inference-keys.json"
LOCK_FILE = ".inference-keys.lock"
KEY_PREFIX = "bik_"
ID_HEX_DIGITS = 12
SECRET_CHARS = 43  # secrets.token_urlsafe(32): 256 bits
KEY_LENGTH = len(KEY_PREFIX) + ID_HEX_DIGITS + 1 + SECRET_CHARS
MAX_KEYS = 1000
MAX_NAME_CHARS = 64
MAX_SCOPE = 100  # deployments one key may name
_HEX = frozenset("0123456789abcdef")
_URLSAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class KeyStoreError(Exception):
    """The keys file cannot be read or written: every key is refused until it is fixed."""


class InvalidKeyRequest(ValueError):
    """A name or scope berth does not take; the message says what to change."""


class UnknownKey(LookupError):
    pass


class TooManyKeys(Exception):
    pass


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    deployments: tuple[str, ...] | None  # None: every deployment
    created: str  # ISO 8601, UTC
    last4: str
    sha256: str  # hex digest of the whole key

    def opens(self, deployment: str | None) -> bool:
        return self.deployments is None or (deployment is not None and deployment in self.deployments)

    def public(self) -> dict:
        """What may be shown: everything but the hash."""
        return {"id": self.id, "name": self.name, "deployments": list(self.deployments) if self.deployments is not None
                else None, "created": self.created, "last4": self.last4}


def key_id_of(text: str) -> str | None:
    """The id of a text shaped like an inference key (whether or not such a key exists), else None."""
    if len(text) != KEY_LENGTH or not text.startswith(KEY_PREFIX) or text[len(KEY_PREFIX) + ID_HEX_DIGITS] != "_":
        return None
    key_id = text[len(KEY_PREFIX):len(KEY_PREFIX) + ID_HEX_DIGITS]
    secret = text[len(KEY_PREFIX) + ID_HEX_DIGITS + 1:]
    if not set(key_id) <= _HEX or not set(secret) <= _URLSAFE:
        return None
    return key_id


def looks_like_a_key(text: str) -> bool:
    return key_id_of(text) is not None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def checked_name(name: str | None) -> str:
    name = name or ""
    if not all(ch.isprintable() for ch in name):
        raise InvalidKeyRequest("name: control characters are not taken; use letters, digits, spaces and punctuation")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise InvalidKeyRequest(f"name: {len(name)} characters; a key's name takes at most {MAX_NAME_CHARS}")
    return name


def checked_scope(deployments: list[str] | None) -> tuple[str, ...] | None:
    """The deployments a key opens, each a deployment name (a DNS label); None: all of them."""
    if deployments is None:
        return None
    if not deployments:
        raise InvalidKeyRequest(
            "deployments: an empty list opens nothing; name at least one deployment, or leave it out for all of them"
        )
    if len(deployments) > MAX_SCOPE:
        raise InvalidKeyRequest(f"deployments: {len(deployments)} named; a key takes at most {MAX_SCOPE}")
    for each in deployments:
        if not isinstance(each, str) or NAME_PATTERN.match(each) is None:
            shown = repr(each)[:80]
            raise InvalidKeyRequest(
                f"deployments: {shown} is not a deployment name; use 1-63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
    return tuple(dict.fromkeys(deployments))  # once each, in the order given


class KeyStore:
    """The keys of one $BERTH_HOME: created, listed, revoked, and checked on every gateway request."""

    def __init__(self, home: Path):
        self.path = home / KEYS_FILE
        self._lock_path = home / LOCK_FILE
        self._records: dict[str, KeyRecord] = {}
        self._seen: tuple | None = None  # the file's (inode, mtime, size) when it was last read
        self._error: str | None = None
        self._mutex = threading.Lock()

    # ---- the check (every forwardAuth request) ---------------------------------------------------

    def verify(self, presented: str) -> KeyRecord | None:
        """The record of a valid key, None for an unknown, revoked or malformed one. Raises
        KeyStoreError when the file is damaged (no key is taken then)."""
        key_id = key_id_of(presented)
        if key_id is None:
            return None
        records = self._current()
        record = records.get(key_id)
        expected = record.sha256 if record is not None else "0" * 64  # same work for an unknown id
        if secrets.compare_digest(digest(presented), expected) and record is not None:
            return record
        return None

    def _current(self) -> dict[str, KeyRecord]:
        try:
            stat = os.stat(self.path)
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        except OSError as error:
            raise KeyStoreError(f"{self.path} cannot be read ({error.strerror}); no inference key is taken") from None
        if seen != self._seen:
            self._load(seen)
        if self._error is not None:
            raise KeyStoreError(self._error)
        return self._records

    def _load(self, seen: tuple | None) -> None:
        with self._mutex:
            if seen is None:
                self._records, self._error = {}, None
            else:
                try:
                    self._records, self._error = _parse(self.path.read_text()), None
                except FileNotFoundError:
                    self._records, self._error = {}, None
                except (OSError, ValueError) as error:
                    self._records = {}
                    self._error = (f"{self.path} is damaged ({error}); no inference key is taken until it is fixed "
                                   "or removed (removing it revokes every key)")
            self._seen = seen

    # ---- admin operations -----------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        return sorted(self._current().values(), key=lambda record: (record.created, record.id))

    def create(self, name: str | None = None, deployments: list[str] | None = None) -> tuple[str, KeyRecord]:
        """A new key: its text (shown once, never stored) and its record."""
        scope = checked_scope(deployments)
        name = checked_name(name)
        with self._exclusive():
            records = dict(self._current())
            if len(records) >= MAX_KEYS:
                raise TooManyKeys(f"there are {len(records)} inference keys, the most berth keeps: revoke some first")
            key_id = secrets.token_hex(ID_HEX_DIGITS // 2)
            while key_id in records:
                key_id = secrets.token_hex(ID_HEX_DIGITS // 2)
            key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            record = KeyRecord(key_id, name, scope, created, key[-4:], digest(key))
            records[key_id] = record
            self._write(records)
        return key, record

    def revoke(self, key_id: str) -> KeyRecord:
        with self._exclusive():
            records = dict(self._current())
            record = records.pop(key_id, None)
            if record is None:
                raise UnknownKey(f"no inference key with id {key_id!r}; `berth keys ls` lists them")
            self._write(records)
        return record

    @contextmanager
    def _exclusive(self):
        """One writer at a time among the processes that share the home (read, change, write)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, records: dict[str, KeyRecord]) -> None:
        body = {"version": 1, "keys": [
            {**record.public(), "sha256": record.sha256} for record in sorted(records.values(), key=lambda r: r.id)
        ]}
        try:  # the temp file is made 0600 (mkstemp) and renamed into place as it is
            write_atomically(self.path, json.dumps(body, indent=1) + "\n")
        except OSError as error:
            raise KeyStoreError(f"{self.path} cannot be written ({error.strerror})") from None
        self._load(_signature(self.path))


def _signature(path: Path) -> tuple | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _parse(text: str) -> dict[str, KeyRecord]:
    """The records of the file's text; ValueError naming what is wrong."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(body, dict) or body.get("version") != 1 or not isinstance(body.get("keys"), list):
        raise ValueError('not {"version": 1, "keys": [...]}')
    records = {}
    for index, entry in enumerate(body["keys"]):
        try:
            key_id, sha = entry["id"], entry["sha256"]
            if not (isinstance(key_id, str) and len(key_id) == ID_HEX_DIGITS and set(key_id) <= _HEX):
                raise ValueError(f"bad id {key_id!r}")
            if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
                raise ValueError("bad sha256")
            scope = entry.get("deployments")
            records[key_id] = KeyRecord(
                id=key_id, name=checked_name(entry.get("name")), deployments=checked_scope(scope),
                created=str(entry.get("created", "")), last4=str(entry.get("last4", ""))[-4:], sha256=sha,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"key {index}: {error}") from None
    return records
