"""Routes through the gateway: one Traefik dynamic-config file per deployment under $BERTH_HOME/routes/.

Traefik's file provider watches the folder; a written file is live ~0.1 s later, a removed one
takes its router away (the gateway then answers 404 for that path).

Model endpoints need the API token unless the deployment is public. Two routers per deployment:
a fast one whose rule matches `Authorization: Bearer <token>` exactly and goes straight to the
engine (no extra hop), and a fallback for everything else under the prefix that asks the API's
/v1/auth/check first (Traefik forwardAuth): a wrong or missing token gets the API's 401 with its
message, an oddly written right one still passes. Route files hold the token: they are 0600.
"""

import asyncio
import re
from pathlib import Path

import yaml
from temporalio import activity

from berth.activities.engine_records import write_atomically
from berth.activities.gateway_certificate import certificate_path, read_certificate
from berth.api_token import load_api_token
from berth.domain.pipeline import CONFIGURE_ROUTE, REMOVE_ROUTE, RouteRequest
from berth.settings import Settings

GATEWAY_ENTRYPOINT = "web"
GATEWAY_FILE = "_berth-gateway.yml"  # not a deployment: names are DNS labels, never start with "_"
AUTH_MIDDLEWARE = "berth-auth"
STAGING_DIR = ".staging"  # route files are written here, then renamed into the watched folder
RULE_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # may stand inside a Traefik rule's backticks
# No Traefik health check on an engine: berth's own watch (await_ready, then supervise) is what says
# whether an engine serves, and a deployment's route only points at its one engine, so Traefik has
# nothing to balance around; a dead engine's route answers 502 until the workflow restarts the engine
# or removes the route. Measured with 700 stand-in deployments: the checks (two per service, one per
# router) kept Traefik at ~19% of a core for good, and each reload of the folder restarted all of
# them, so after the last deployment Traefik worked through its queue of reloads for ~70 s at a full
# core (~25 s without them, then 0%). They also made the gateway lag an engine that was still loading
# when a check came (it was asked again only at the next unhealthyInterval).


def route_path(routes_dir: Path, deployment: str) -> Path:
    return routes_dir / f"{deployment}.yml"


def route_config(request: RouteRequest, token: str | None) -> dict:
    name = f"berth-{request.deployment}"
    prefix_rule = f"PathPrefix(`/models/{request.deployment}/`)"
    strip = f"{name}-strip"
    if request.public or not token:
        routers = {name: _router(prefix_rule, [strip], name)}
    else:
        routers = {f"{name}-auth": _router(prefix_rule, [f"{AUTH_MIDDLEWARE}@file", strip], name, 10)}
        if RULE_SAFE_TOKEN.match(token):
            token_rule = f"{prefix_rule} && Header(`Authorization`, `Bearer {token}`)"
            routers[name] = _router(token_rule, [strip], name, 20)
    return {
        "http": {
            "routers": routers,
            "middlewares": {strip: {"stripPrefix": {"prefixes": [f"/models/{request.deployment}"]}}},
            "services": {
                name: {
                    "loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{request.port}"}]}
                }
            },
        }
    }


def _router(rule: str, middlewares: list[str], service: str, priority: int | None = None) -> dict:
    router = {"rule": rule, "entryPoints": [GATEWAY_ENTRYPOINT], "middlewares": middlewares, "service": service}
    if priority is not None:
        router["priority"] = priority
    return router


def write_route(routes_dir: Path, request: RouteRequest, token: str | None = None) -> Path:
    text = yaml.safe_dump(route_config(request, token), sort_keys=False)
    path = route_path(routes_dir, request.deployment)
    try:
        if path.read_text() == text:
            return path  # same route already live: no reload for Traefik
    except FileNotFoundError:
        pass
    # written in a subfolder Traefik does not watch, then renamed in: one event for Traefik, not the
    # four of a temp file created, written and renamed in the watched folder. Traefik's file provider
    # reloads every route on every event it sees, so with 200 routes, writing them one by one kept
    # it busy (at 1.2 cores) for over 40 s; this way, ~17 s.
    write_atomically(path, text, tmp_dir=routes_dir / STAGING_DIR)
    return path


@activity.defn(name=CONFIGURE_ROUTE)
async def configure_route(request: RouteRequest) -> str:
    """Route /models/<name>/ to the engine's port; returns the public endpoint."""
    settings = Settings.from_env()
    await asyncio.to_thread(write_route, settings.routes_dir, request, load_api_token(settings))
    return f"{settings.gateway_url}/models/{request.deployment}/v1"


@activity.defn(name=REMOVE_ROUTE)
async def remove_route(deployment: str) -> None:
    route_path(Settings.from_env().routes_dir, deployment).unlink(missing_ok=True)


def write_gateway_config(settings: Settings) -> Path:
    """What every route shares: the forwardAuth middleware that asks the API about a token, and,
    once it has been made, the default TLS certificate that spares Traefik a new RSA key at each
    route change (berth.activities.gateway_certificate)."""
    config: dict = {
        "http": {
            "middlewares": {
                AUTH_MIDDLEWARE: {
                    "forwardAuth": {
                        "address": f"{settings.api_url}/v1/auth/check",
                        "authRequestHeaders": ["Authorization"],
                    }
                }
            }
        }
    }
    certificate = read_certificate(certificate_path(settings))
    if certificate is not None:
        certificate_pem, key_pem = certificate
        # PEM text, not file paths (Traefik takes either): its routes folder may be mounted elsewhere
        default = {"defaultCertificate": {"certFile": certificate_pem, "keyFile": key_pem}}
        config["tls"] = {"stores": {"default": default}}
    path = settings.routes_dir / GATEWAY_FILE
    text = yaml.safe_dump(config, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        write_atomically(path, text, tmp_dir=settings.routes_dir / STAGING_DIR)
    return path
