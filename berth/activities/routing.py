"""Routes through the gateway: one Traefik dynamic-config file per deployment under $BERTH_HOME/routes/.

Traefik's file provider watches the folder; a written file is live ~0.2 s later, a removed one
takes its router away (the gateway then answers 404 for that path).
"""

import asyncio
from pathlib import Path

import yaml
from temporalio import activity

from berth.activities.engine_records import write_atomically
from berth.domain.pipeline import CONFIGURE_ROUTE, REMOVE_ROUTE, RouteRequest
from berth.engines.registry import get_engine
from berth.settings import Settings

GATEWAY_ENTRYPOINT = "web"


def route_path(routes_dir: Path, deployment: str) -> Path:
    return routes_dir / f"{deployment}.yml"


def route_config(request: RouteRequest, health_path: str) -> dict:
    name = f"berth-{request.deployment}"
    middlewares = [f"{name}-strip"]
    return {
        "http": {
            "routers": {
                name: {
                    "rule": f"PathPrefix(`/models/{request.deployment}/`)",
                    "entryPoints": [GATEWAY_ENTRYPOINT],
                    "middlewares": middlewares,
                    "service": name,
                }
            },
            "middlewares": {
                f"{name}-strip": {"stripPrefix": {"prefixes": [f"/models/{request.deployment}"]}}
            },
            "services": {
                name: {
                    "loadBalancer": {
                        "servers": [{"url": f"http://127.0.0.1:{request.port}"}],
                        "healthCheck": {
                            "path": health_path,
                            "interval": "5s",
                            "unhealthyInterval": "500ms",
                            "timeout": "2s",
                        },
                    }
                }
            },
        }
    }


def write_route(routes_dir: Path, request: RouteRequest) -> Path:
    health_path = get_engine(request.engine).health_path
    text = yaml.safe_dump(route_config(request, health_path), sort_keys=False)
    path = route_path(routes_dir, request.deployment)
    try:
        if path.read_text() == text:
            return path  # same route already live: no reload for Traefik
    except FileNotFoundError:
        pass
    write_atomically(path, text)
    return path


@activity.defn(name=CONFIGURE_ROUTE)
async def configure_route(request: RouteRequest) -> str:
    """Route /models/<name>/ to the engine's port; returns the public endpoint."""
    settings = Settings.from_env()
    await asyncio.to_thread(write_route, settings.routes_dir, request)
    return f"{settings.gateway_url}/models/{request.deployment}/v1"


@activity.defn(name=REMOVE_ROUTE)
async def remove_route(deployment: str) -> None:
    route_path(Settings.from_env().routes_dir, deployment).unlink(missing_ok=True)
