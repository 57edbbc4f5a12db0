"""Route files for Traefik's file provider: what each deployment's route says."""

import yaml

from berth import atomic_write
from berth.activities.routing import STAGING_DIR, route_config, write_route
from berth.domain.pipeline import RouteRequest


def test_route_strips_the_prefix_and_checks_health():
    config = route_config(RouteRequest(deployment="qwen", port=20001, engine="llamacpp"), "/health", None)
    router = config["http"]["routers"]["berth-qwen"]
    assert router["rule"] == "PathPrefix(`/models/qwen/`)"
    assert router["middlewares"] == ["berth-qwen-strip"]
    assert config["http"]["middlewares"]["berth-qwen-strip"] == {"stripPrefix": {"prefixes": ["/models/qwen"]}}
    balancer = config["http"]["services"]["berth-qwen"]["loadBalancer"]
    assert balancer["servers"] == [{"url": "http://127.0.0.1:20001"}]
    assert balancer["healthCheck"]["path"] == "/health"


def test_with_a_token_the_fast_router_matches_it_and_the_fallback_asks_the_api():
    routers = route_config(RouteRequest(deployment="qwen", port=1, engine="llamacpp"), "/health", "t0k-en")[
        "http"
    ]["routers"]
    assert routers["berth-qwen"]["rule"] == "PathPrefix(`/models/qwen/`) && Header(`Authorization`, `Bearer t0k-en`)"
    assert routers["berth-qwen"]["priority"] > routers["berth-qwen-auth"]["priority"]
    assert routers["berth-qwen-auth"]["middlewares"] == ["berth-auth@file", "berth-qwen-strip"]
    assert routers["berth-qwen-auth"]["rule"] == "PathPrefix(`/models/qwen/`)"


def test_a_token_that_cannot_stand_in_a_rule_gets_only_the_checked_router():
    routers = route_config(RouteRequest(deployment="q", port=1, engine="llamacpp"), "/health", "a`b")["http"]["routers"]
    assert list(routers) == ["berth-q-auth"]


def test_a_public_deployment_has_no_auth():
    request = RouteRequest(deployment="q", port=1, engine="llamacpp", public=True)
    routers = route_config(request, "/health", "token")["http"]["routers"]
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


def test_a_dead_engine_is_marked_down_and_a_down_one_is_asked_again_soon():
    """Traefik marks a server down at its next check (interval) and asks a down one again every
    unhealthyInterval: that one bounds how long the gateway lags an engine that was still loading
    when a check came, so it is kept well under a second."""
    config = route_config(RouteRequest(deployment="q", port=1, engine="llamacpp"), "/health", None)
    check = config["http"]["services"]["berth-q"]["loadBalancer"]["healthCheck"]
    seconds = {"ms": 0.001, "s": 1.0}

    def duration(text: str) -> float:
        number = text.rstrip("ms")
        return float(number) * seconds[text[len(number):]]

    assert duration(check["interval"]) <= 10
    assert duration(check["unhealthyInterval"]) <= 0.2
    assert duration(check["timeout"]) < duration(check["interval"])
