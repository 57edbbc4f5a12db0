"""Route files for Traefik's file provider: what each deployment's route says."""

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import yaml

from berth import atomic_write
from berth.activities.routing import STAGING_DIR, route_config, write_route
from berth.domain.pipeline import RouteRequest


def test_route_strips_the_prefix_and_points_at_the_engine_alone():
    config = route_config(RouteRequest(deployment="qwen", port=20001, engine="llamacpp"), None)
    router = config["http"]["routers"]["berth-qwen"]
    assert router["rule"] == "PathPrefix(`/models/qwen/`)"
    assert router["middlewares"] == ["berth-qwen-strip"]
    assert config["http"]["middlewares"]["berth-qwen-strip"] == {"stripPrefix": {"prefixes": ["/models/qwen"]}}
    balancer = config["http"]["services"]["berth-qwen"]["loadBalancer"]
    assert balancer == {"servers": [{"url": "http://127.0.0.1:20001"}]}, "no health check of Traefik's own"


def test_with_a_token_the_fast_router_matches_it_and_the_fallback_asks_the_api():
    routers = route_config(RouteRequest(deployment="qwen", port=1, engine="llamacpp"), "t0k-en")[
        "http"
    ]["routers"]
    assert routers["berth-qwen"]["rule"] == "PathPrefix(`/models/qwen/`) && Header(`Authorization`, `Bearer t0k-en`)"
    assert routers["berth-qwen"]["priority"] > routers["berth-qwen-auth"]["priority"]
    assert routers["berth-qwen-auth"]["middlewares"] == ["berth-auth@file", "berth-qwen-strip"]
    assert routers["berth-qwen-auth"]["rule"] == "PathPrefix(`/models/qwen/`)"


def test_a_token_that_cannot_stand_in_a_rule_gets_only_the_checked_router():
    routers = route_config(RouteRequest(deployment="q", port=1, engine="llamacpp"), "a`b")["http"]["routers"]
    assert list(routers) == ["berth-q-auth"]


def test_a_public_deployment_has_no_auth():
    request = RouteRequest(deployment="q", port=1, engine="llamacpp", public=True)
    routers = route_config(request, "token")["http"]["routers"]
    assert list(routers) == ["berth-q"] and "Header" not in routers["berth-q"]["rule"]


def test_write_route_is_atomic_and_idempotent(tmp_path):
    request = RouteRequest(deployment="qwen", port=20001, engine="llamacpp")
    path = write_route(tmp_path, request)
    first = path.stat().st_mtime_ns
    assert write_route(tmp_path, request) == path
    assert path.stat().st_mtime_ns == first, "an unchanged route is not rewritten"
    assert yaml.safe_load(path.read_text())["http"]["services"]["berth-qwen"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [STAGING_DIR, "qwen.yml"]
    assert not any((tmp_path / STAGING_DIR).iterdir()), "no temp files left"


def test_a_route_file_appears_in_the_watched_folder_only_by_its_final_rename(tmp_path, monkeypatch):
    # Traefik reloads every route on each event in the folder it watches (not in subfolders): the
    # temp file is made and written in the staging subfolder, then renamed in
    made_in = []
    real_mkstemp = atomic_write.tempfile.mkstemp
    monkeypatch.setattr(atomic_write.tempfile, "mkstemp", lambda **kw: made_in.append(kw["dir"]) or real_mkstemp(**kw))
    write_route(tmp_path, RouteRequest(deployment="qwen", port=20001, engine="llamacpp"))
    assert made_in == [tmp_path / STAGING_DIR]
    assert (tmp_path / "qwen.yml").stat().st_mode & 0o777 == 0o600, "it holds the token"


LOADS_FOR_S = 6  # longer than Traefik's health check interval was


async def test_the_gateway_serves_an_engine_from_its_first_answer(stack, name):
    """A route goes live while its engine still loads (it is written beside the launch), and a big
    model loads for minutes; the first request after the engine listens goes through. Traefik judges
    no engine itself: with its health check (every 5 s), one that came during the load marked the
    engine down, and the gateway said 503 until the check after that."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    route = f"_{name}"  # not a deployment name: the worker's reconcile leaves it alone
    path = write_route(stack.settings.routes_dir, RouteRequest(deployment=route, port=port, engine="llamacpp", public=True))
    url = f"{stack.settings.gateway_url}/models/{route}/health"
    server = None
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(500):  # the route is live once Traefik answers for it (502: nothing listens)
                if (await client.get(url)).status_code == 502:
                    break
                await asyncio.sleep(0.01)
            assert (await client.get(url)).status_code == 502
            await asyncio.sleep(LOADS_FOR_S)
            server = ThreadingHTTPServer(("127.0.0.1", port), _Healthy)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            assert (await client.get(url)).status_code == 200
    finally:
        path.unlink()
        if server:
            server.shutdown()
            server.server_close()


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass
