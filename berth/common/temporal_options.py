"""How berth's processes reach Temporal: the namespace, TLS and an API key, read from the
BERTH_TEMPORAL_* variables (berth.settings) and checked before anything connects.

The embedded dev server of `berth up` speaks plain gRPC on the node's address, with no TLS and no
API key. A Temporal cluster of your own (self-hosted with mTLS, or Temporal Cloud) takes:

    BERTH_TEMPORAL_NAMESPACE        the namespace (default `default`)
    BERTH_TEMPORAL_TLS=1            TLS with the system's CA roots (implied by any option below)
    BERTH_TEMPORAL_TLS_CA           a PEM file of the CA that signed the server's certificate
    BERTH_TEMPORAL_TLS_CERT         mTLS: this client's certificate (PEM) ...
    BERTH_TEMPORAL_TLS_KEY          ... and its private key (PEM); both or neither
    BERTH_TEMPORAL_TLS_SERVER_NAME  the name to check the server's certificate against, when it is
                                    not the host of BERTH_TEMPORAL_ADDRESS
    BERTH_TEMPORAL_API_KEY          an API key (Temporal Cloud), sent as a bearer on every call ...
    BERTH_TEMPORAL_API_KEY_FILE     ... or read from this file (keep it 0600)

No temporalio here: `berth join` and `berth up` check the options before they start anything,
and berth.common.temporal_connection turns them into the SDK's arguments.
"""

from dataclasses import dataclass, field
from pathlib import Path

from berth.settings import Settings

PEM_MARK = b"-----BEGIN "


class TemporalOptionsError(ValueError):
    """A BERTH_TEMPORAL_* option that cannot be used as given; the message says which and why."""


@dataclass(frozen=True)
class TemporalOptions:
    namespace: str
    tls: bool = False
    server_root_ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """What a person may read: the options in use, never the key material."""
        parts = [f"namespace {self.namespace}"]
        if self.tls:
            tls = "TLS"
            if self.server_root_ca_cert:
                tls += " (server CA from BERTH_TEMPORAL_TLS_CA)"
            if self.client_cert:
                tls += ", mTLS client certificate"
            if self.server_name:
                tls += f", server name {self.server_name}"
            parts.append(tls)
        else:
            parts.append("no TLS")
        if self.api_key:
            parts.append("API key")
        return ", ".join(parts)


def _read(variable: str, path: str, pem: bool) -> bytes:
    where = Path(path)
    if not where.is_absolute():
        raise TemporalOptionsError(f"{variable}={path!r}: give an absolute path")
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        raise TemporalOptionsError(f"{variable}={path}: no such file") from None
    except IsADirectoryError:
        raise TemporalOptionsError(f"{variable}={path}: a folder, not a file") from None
    except OSError as error:
        raise TemporalOptionsError(f"{variable}={path}: cannot be read ({error.strerror or error})") from None
    if not data.strip():
        raise TemporalOptionsError(f"{variable}={path}: the file is empty")
    if pem and PEM_MARK not in data:
        raise TemporalOptionsError(f"{variable}={path}: not a PEM file (no '-----BEGIN ...' line)")
    return data


def temporal_options(settings: Settings) -> TemporalOptions:
    """The options, their files read and checked; TemporalOptionsError names what is wrong."""
    namespace = settings.temporal_namespace
    if not namespace or len(namespace) > 255 or any(c.isspace() for c in namespace):
        raise TemporalOptionsError(f"BERTH_TEMPORAL_NAMESPACE={namespace!r} is not a namespace name")
    cert, key = settings.temporal_tls_cert, settings.temporal_tls_key
    if bool(cert) != bool(key):
        given, missing = ("BERTH_TEMPORAL_TLS_CERT", "BERTH_TEMPORAL_TLS_KEY") if cert else (
            "BERTH_TEMPORAL_TLS_KEY", "BERTH_TEMPORAL_TLS_CERT")
        raise TemporalOptionsError(f"{given} is set but {missing} is not: mTLS needs the client certificate and its key")
    if settings.temporal_api_key and settings.temporal_api_key_file:
        raise TemporalOptionsError("set BERTH_TEMPORAL_API_KEY or BERTH_TEMPORAL_API_KEY_FILE, not both")
    api_key = settings.temporal_api_key
    if settings.temporal_api_key_file:
        api_key = _read("BERTH_TEMPORAL_API_KEY_FILE", settings.temporal_api_key_file, pem=False).decode(
            errors="replace").strip()
        if any(c.isspace() or not c.isprintable() for c in api_key):
            raise TemporalOptionsError(
                f"BERTH_TEMPORAL_API_KEY_FILE={settings.temporal_api_key_file}: the key must be one line with no spaces"
            )
    ca = _read("BERTH_TEMPORAL_TLS_CA", settings.temporal_tls_ca, pem=True) if settings.temporal_tls_ca else None
    client_cert = _read("BERTH_TEMPORAL_TLS_CERT", cert, pem=True) if cert else None
    client_key = _read("BERTH_TEMPORAL_TLS_KEY", key, pem=True) if key else None
    tls = bool(settings.temporal_tls or ca or client_cert or settings.temporal_tls_server_name or api_key)
    return TemporalOptions(
        namespace=namespace,
        tls=tls,
        server_root_ca_cert=ca,
        client_cert=client_cert,
        client_private_key=client_key,
        server_name=settings.temporal_tls_server_name,
        api_key=api_key or None,
    )


def custom_options_set(settings: Settings) -> list[str]:
    """The TLS / API key variables that are set (the embedded dev server takes none of them)."""
    return [
        name for name, value in (
            ("BERTH_TEMPORAL_TLS", settings.temporal_tls),
            ("BERTH_TEMPORAL_TLS_CA", settings.temporal_tls_ca),
            ("BERTH_TEMPORAL_TLS_CERT", settings.temporal_tls_cert),
            ("BERTH_TEMPORAL_TLS_KEY", settings.temporal_tls_key),
            ("BERTH_TEMPORAL_TLS_SERVER_NAME", settings.temporal_tls_server_name),
            ("BERTH_TEMPORAL_API_KEY", settings.temporal_api_key),
            ("BERTH_TEMPORAL_API_KEY_FILE", settings.temporal_api_key_file),
        ) if value
    ]


def check_or_exit(settings: Settings) -> TemporalOptions:
    """For a process's start: the options, or exit saying what to fix (no traceback)."""
    try:
        return temporal_options(settings)
    except TemporalOptionsError as error:
        raise SystemExit(f"berth: {error}") from None
