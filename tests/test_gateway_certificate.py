"""The gateway's default TLS certificate: made once per home, private, a matching pair, carried in
the gateway config as PEM text, and really the one Traefik serves as its default."""

import asyncio
import os
import ssl
import subprocess
import sys
import time

import yaml

from berth.node.gateway_certificate import (
    LOWEST_PRIORITY,
    certificate_path,
    ensure_certificate,
    read_certificate,
)
from berth.node.routes import GATEWAY_FILE, write_gateway_config
from berth.settings import Settings
from berth.testing.harness import free_port
from berth.worker.gateway import traefik_binary
from berth.worker.main import give_gateway_a_certificate


def _settings(home) -> Settings:
    return Settings.from_env({"BERTH_HOME": str(home)})


def _der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


async def test_the_certificate_is_made_once_private_and_matches_its_key(tmp_path):
    path = tmp_path / "cert.pem"
    assert await ensure_certificate(path)
    assert path.stat().st_mode & 0o777 == 0o600, "it holds a private key"
    certificate_pem, key_pem = read_certificate(path)
    (tmp_path / "c.pem").write_text(certificate_pem)
    (tmp_path / "k.pem").write_text(key_pem)
    # OpenSSL refuses a key that does not belong to the certificate
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    made = path.read_text()
    assert await ensure_certificate(path)
    assert path.read_text() == made, "an existing pair is kept"


async def test_a_damaged_certificate_file_is_made_again(tmp_path):
    path = tmp_path / "cert.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\ntruncated")
    assert read_certificate(path) is None
    assert await ensure_certificate(path)
    assert read_certificate(path) is not None


def test_the_gateway_config_carries_the_certificate_once_it_is_made(tmp_path):
    settings = _settings(tmp_path)
    settings.ensure_dirs()
    config = yaml.safe_load(write_gateway_config(settings).read_text())
    assert "tls" not in config and config["http"]["middlewares"]["berth-auth"]
    asyncio.run(ensure_certificate(certificate_path(settings)))
    config = yaml.safe_load(write_gateway_config(settings).read_text())
    default = config["tls"]["stores"]["default"]["defaultCertificate"]
    certificate_pem, key_pem = read_certificate(certificate_path(settings))
    assert (default["certFile"], default["keyFile"]) == (certificate_pem, key_pem), "the PEM text, not paths"
    assert config["http"]["middlewares"]["berth-auth"], "the shared middleware is still there"


def _config_has_certificate(settings: Settings) -> bool:
    return "tls" in yaml.safe_load((settings.routes_dir / GATEWAY_FILE).read_text())


async def test_the_worker_makes_a_new_homes_certificate_at_once_and_an_existing_one_is_kept(tmp_path):
    """A new home's certificate is made without waiting and lands in the gateway config; once made,
    a later start puts the same one there (nothing is made again)."""
    settings = _settings(tmp_path)
    settings.ensure_dirs()
    write_gateway_config(settings)
    assert not _config_has_certificate(settings)
    await give_gateway_a_certificate(settings)
    assert _config_has_certificate(settings)
    made = certificate_path(settings).read_text()

    (settings.routes_dir / GATEWAY_FILE).unlink()
    await give_gateway_a_certificate(settings)
    assert _config_has_certificate(settings)
    assert certificate_path(settings).read_text() == made


def test_the_certificate_maker_runs_at_the_lowest_cpu_priority(tmp_path):
    """The maker lowers its own priority before the expensive part (importing `cryptography`,
    making the key): seen from the process itself, through a sitecustomize that reports its
    niceness when it exits."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(
        "import atexit, os\n"
        "atexit.register(lambda: open(os.environ['NICE_REPORT'], 'w').write(str(os.nice(0))))\n"
    )
    report = tmp_path / "nice.txt"
    env = {**os.environ, "PYTHONPATH": f"{probe}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "NICE_REPORT": str(report)}
    done = subprocess.run([sys.executable, "-m", "berth.node.gateway_certificate", str(tmp_path / "c.pem")],
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert read_certificate(tmp_path / "c.pem") is not None
    assert int(report.read_text()) == min(19, os.nice(0) + LOWEST_PRIORITY)  # 19: the lowest there is


async def test_traefik_serves_the_given_certificate_as_its_default(tmp_path):
    """A TLS entry point (berth's gateway has none: this one is only for the test) shows the default
    certificate: it is berth's, read from the PEM text in the gateway config, not one Traefik made."""
    settings = _settings(tmp_path)
    settings.ensure_dirs()
    assert await ensure_certificate(certificate_path(settings))
    write_gateway_config(settings)
    certificate_pem, _ = read_certificate(certificate_path(settings))
    port = free_port()
    static = {
        "entryPoints": {"websecure": {"address": f"127.0.0.1:{port}", "http": {"tls": {}}}},
        "providers": {"file": {"directory": str(settings.routes_dir), "watch": True}},
        "log": {"level": "ERROR"},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }
    (tmp_path / "traefik.yml").write_text(yaml.safe_dump(static))
    traefik = subprocess.Popen([traefik_binary(), f"--configFile={tmp_path / 'traefik.yml'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    served = None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                served = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port), timeout=2)
                if _der(served) == _der(certificate_pem):
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
    finally:
        traefik.terminate()
        _, errors = traefik.communicate(timeout=10)
    assert served is not None, f"Traefik never answered TLS: {errors.decode()[-2000:]}"
    assert _der(served) == _der(certificate_pem), "Traefik serves a certificate of its own making"
    assert (settings.routes_dir / GATEWAY_FILE).exists()


async def test_the_worker_gives_its_gateway_a_certificate(stack):
    """berth's own stack: the worker makes the certificate once it polls, then rewrites the gateway
    config with it."""
    path = stack.home / "routes" / GATEWAY_FILE
    deadline = time.monotonic() + 30
    while "tls" not in (yaml.safe_load(path.read_text()) or {}) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    config = yaml.safe_load(path.read_text())
    assert "tls" in config, "the worker never added the default certificate"
    certificate_pem, _ = read_certificate(stack.home / "gateway-default-certificate.pem")
    assert config["tls"]["stores"]["default"]["defaultCertificate"]["certFile"] == certificate_pem
