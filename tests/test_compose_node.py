"""docker-compose.node.yml, what a second machine of a cluster runs (worker + gateway against the first
machine's Temporal), checked without a Docker engine as tests/test_compose.py checks docker-compose.yml
(whose loading, interpolation and schema this reuses)."""

import json
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from berth.common.temporal_options import temporal_options
from berth.settings import Settings
from tests.test_compose import (
    COMPOSE,
    SCHEMA,
    SECRET_KEY,
    MissingVariable,
    berth_variables,
    environment,
    flags,
    interpolate,
    mounts,
)

NODE_COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.node.yml"
GIVEN = {
    "BERTH_TEMPORAL_ADDRESS": "10.0.0.1:7233",
    "BERTH_API_URL": "http://10.0.0.1:8000",
    "BERTH_NODE_ID": "gpu-2",
    "BERTH_NODE_ADDRESS": "10.0.0.2",
    "BERTH_CLUSTER_TOKEN": "a-cluster-token",
    "BERTH_SECRET_KEY": SECRET_KEY,
}
# what the worker of a joined machine must be told (its defaults would be wrong there)
NEEDED = {
    "BERTH_HOME", "BERTH_TEMPORAL_ADDRESS", "BERTH_API_URL", "BERTH_NODE_ID", "BERTH_NODE_ADDRESS",
    "BERTH_CLUSTER_TOKEN", "BERTH_SECRET_KEY", "BERTH_GATEWAY_URL",
}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(NODE_COMPOSE.read_text())


@pytest.fixture(scope="module")
def node(raw) -> dict:
    return interpolate(raw, GIVEN)


@pytest.fixture(scope="module")
def first() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {"BERTH_API_TOKEN": "t", "BERTH_SECRET_KEY": SECRET_KEY})


def test_the_file_is_valid_against_the_compose_specification_schema(node):
    jsonschema = pytest.importorskip("jsonschema", reason="`pip install jsonschema` to validate against the schema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(node)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("missing", sorted(GIVEN))
def test_each_thing_a_machine_must_be_told_is_required(raw, missing):
    with pytest.raises(MissingVariable, match=missing):
        interpolate(raw, {key: value for key, value in GIVEN.items() if key != missing})


def test_a_node_runs_the_worker_and_the_gateway_only_as_the_first_machine_runs_them(node, first):
    assert sorted(node["services"]) == ["traefik", "worker"]
    worker, traefik = node["services"]["worker"], node["services"]["traefik"]
    main_worker, main_traefik = first["services"]["worker"], first["services"]["traefik"]
    assert worker["command"] == main_worker["command"] == ["berth", "worker"]
    assert worker["image"] == main_worker["image"] and worker["build"] == main_worker["build"] == "."
    assert traefik["image"] == main_traefik["image"] and traefik["command"] == main_traefik["command"]
    assert worker["network_mode"] == traefik["network_mode"] == "host"
    assert worker["user"] == "root" and worker["init"] is True
    assert worker["deploy"] == main_worker["deploy"]


def test_the_workers_environment_is_what_berth_reads_and_holds_no_admin_token(node):
    env = environment(node["services"]["worker"])
    read = berth_variables()
    assert not {key for key in env if key.startswith("BERTH_")} - read
    assert NEEDED <= set(env) and all(env[key] for key in NEEDED), env
    assert "BERTH_API_TOKEN" not in env  # a joined machine serves and copies; it does not administer
    settings = Settings.from_env(env)
    assert settings.temporal_address == "10.0.0.1:7233" and settings.api_url == "http://10.0.0.1:8000"
    assert settings.node_id == "gpu-2"
    assert not temporal_options(settings).tls  # the empty TLS variables are unset


def test_the_gateway_is_where_the_worker_says_peers_reach_it_and_shares_the_routes(node):
    worker, traefik = node["services"]["worker"], node["services"]["traefik"]
    settings = Settings.from_env(environment(worker))
    traefik_flags = flags(traefik["command"])
    port = int(traefik_flags["--entrypoints.web.address"].rsplit(":", 1)[1])
    assert traefik_flags["--entrypoints.web.address"] == f":{port}"  # every interface: peers and clients
    assert settings.peer_gateway_url == f"http://10.0.0.2:{port}"
    assert urlsplit(settings.gateway_url).port == port
    routes = traefik_flags["--providers.file.directory"]
    shared = {source for source, target, _ in mounts(worker) if target == str(settings.routes_dir)}
    assert shared == {source for source, target, _ in mounts(traefik) if target == routes} == {"routes"}
    assert "routes" in node["volumes"]


def test_tls_files_live_in_the_mounted_folder(raw):
    node = interpolate(raw, {**GIVEN, "BERTH_TEMPORAL_TLS_CA": "/etc/berth/temporal/ca.pem",
                             "BERTH_TEMPORAL_CERTS": "/srv/temporal-certs"})
    worker = node["services"]["worker"]
    assert ("/srv/temporal-certs", "/etc/berth/temporal", "ro") in mounts(worker)
    ca = PurePosixPath(environment(worker)["BERTH_TEMPORAL_TLS_CA"])
    assert ca.is_relative_to("/etc/berth/temporal")


def test_the_first_machine_publishes_temporal_and_the_api_on_loopback_unless_told(raw):
    first = interpolate(yaml.safe_load(COMPOSE.read_text()), {
        "BERTH_API_TOKEN": "t", "BERTH_SECRET_KEY": SECRET_KEY,
        "BERTH_TEMPORAL_PUBLISH": "10.0.0.1", "BERTH_API_PUBLISH": "10.0.0.1",
        "BERTH_NODE_ADDRESS": "10.0.0.1", "BERTH_CLUSTER_TOKEN": "a-cluster-token",
    })
    services = first["services"]
    assert "10.0.0.1:7233:7233" in services["temporal"]["ports"]
    assert "10.0.0.1:8000:8000" in services["api"]["ports"]
    settings = Settings.from_env(environment(services["worker"]))
    assert settings.peer_gateway_url == "http://10.0.0.1:8080"
