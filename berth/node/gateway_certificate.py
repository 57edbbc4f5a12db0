"""The gateway's default TLS certificate: why Traefik is given one, and how it is made.

Traefik builds its default TLS store again on every configuration change and, when the store has no
default certificate, makes one with a fresh 2048-bit RSA key (its generate.DefaultCertificate).
Measured here on bare Traefik 3.7 with one route: 30-380 ms of CPU for each route added or removed,
and that on the cores the engines and Temporal need at the same moment; 0-10 ms once the store has a
certificate. berth's gateway speaks plain HTTP, so this certificate is never shown to a client: it
only spares Traefik that work.

It is made once per BERTH_HOME (an ECDSA P-256 key, self-signed) by a short-lived process
(`python -m berth.node.gateway_certificate PATH`), started as the worker starts, at the lowest
CPU priority so that `berth up` is not slower for it: the `cryptography` package would otherwise
stay in the worker's memory for good (~19 MB). The PEM text goes into the gateway's dynamic config
itself rather than as a path, so Traefik reads it wherever its routes folder is mounted (compose).
"""

import asyncio
import logging
import os
import sys
from pathlib import Path

from berth.common.atomic_write import write_atomically
from berth.settings import Settings

CERTIFICATE_FILE = "gateway-default-certificate.pem"  # certificate then key, mode 0600
CERTIFICATE_MARKER = "-----BEGIN CERTIFICATE-----"
KEY_MARKER = "-----BEGIN PRIVATE KEY-----"
LOWEST_PRIORITY = 19  # os.nice increment


def certificate_path(settings: Settings) -> Path:
    return settings.home / CERTIFICATE_FILE


def read_certificate(path: Path) -> tuple[str, str] | None:
    """(certificate PEM, key PEM) when the file holds both, else None."""
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    certificate_at, key_at = text.find(CERTIFICATE_MARKER), text.find(KEY_MARKER)
    if certificate_at < 0 or key_at < certificate_at:
        return None
    return text[certificate_at:key_at].strip() + "\n", text[key_at:].strip() + "\n"


async def ensure_certificate(path: Path, timeout_s: float = 60) -> bool:
    """Make the certificate file unless it already holds a pair. False (logged) when it could not be
    made: Traefik then goes on making its own at each change, slower but correct."""
    if read_certificate(path) is not None:
        return True
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", __name__, str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0 or read_certificate(path) is None:
        last_line = (stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        logging.warning("could not make the gateway's default certificate (%s): Traefik will make "
                        "its own at each route change, which costs it CPU", last_line)
        return False
    return True


def certificate_pem(common_name: str = "berth gateway") -> str:
    """A self-signed ECDSA P-256 certificate and its PKCS#8 key, as PEM text."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        # RFC 5280's "no well-defined expiration date": nothing to renew for a certificate never served
        .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode() + key_pem.decode()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m berth.node.gateway_certificate PATH", file=sys.stderr)
        return 2
    os.nice(LOWEST_PRIORITY)  # made while berth starts: the pieces a user waits for come first
    write_atomically(Path(argv[0]), certificate_pem())  # a temp file from mkstemp: mode 0600
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
