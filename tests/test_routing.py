"""Route files for Traefik's file provider: what each deployment's route says."""

import yaml

from berth.activities.routing import route_config, write_route
from berth.domain.pipeline import RouteRequest


def test_route_strips_the_prefix_and_checks_health():
    config = route_config(RouteRequest(deployment="qwen", port=20001, engine="llamacpp"), "/health")
    router = config["http"]["routers"]["berth-qwen"]
    assert router["rule"] == "PathPrefix(`/models/qwen/`)"
    assert router["middlewares"][-1] == "berth-qwen-strip"
    assert config["http"]["middlewares"]["berth-qwen-strip"] == {"stripPrefix": {"prefixes": ["/models/qwen"]}}
    balancer = config["http"]["services"]["berth-qwen"]["loadBalancer"]
    assert balancer["servers"] == [{"url": "http://127.0.0.1:20001"}]
    assert balancer["healthCheck"]["path"] == "/health"


def test_write_route_is_atomic_and_idempotent(tmp_path):
    request = RouteRequest(deployment="qwen", port=20001, engine="llamacpp")
    path = write_route(tmp_path, request)
    first = path.stat().st_mtime_ns
    assert write_route(tmp_path, request) == path
    assert path.stat().st_mtime_ns == first, "an unchanged route is not rewritten"
    assert yaml.safe_load(path.read_text())["http"]["services"]["berth-qwen"]
    assert [p.name for p in tmp_path.iterdir()] == ["qwen.yml"], "no temp files left"
