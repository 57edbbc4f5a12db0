"""docker-compose.yml and the Dockerfile, checked without a Docker engine (none runs here).

- The Compose Specification's JSON schema: tests/fixtures/compose-spec.json, the copy that the PyPI
  package check-jsonschema 0.39.0 vendors (check_jsonschema/builtin_schemas/vendor/compose-spec.json,
  Apache-2.0, licence in tests/fixtures/compose-spec.LICENSE). Validating needs `jsonschema`.
- Interpolation as Compose does it (${VAR:-default}, ${VAR:?error}, $$), so that a stray `$` or a
  variable nobody sets is caught.
- Every BERTH_* variable berth's code reads is either set where a service needs it or listed below
  with the reason its default is right in production; a new variable fails this test until it is
  placed. The wiring between services (ports, addresses, the shared routes volume, host paths) is
  checked against berth's own Settings, and Traefik's flags against the static config `berth up` uses.
"""

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from berth.api.cli import build_parser
from berth.domain.temporal_names import SEARCH_ATTRIBUTES
from berth.settings import Settings
from berth.worker.gateway import static_config
from berth.worker.prometheus_config import prometheus_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).parent / "fixtures" / "compose-spec.json"
TOKEN = "a-test-token"
SECRET_KEY = "a-test-secret-key-of-at-least-32-characters"
BERTH_SERVICES = ("worker", "api")

# BERTH_* names in berth's code that are not settings read from the environment.
NOT_SETTINGS = {
    "BERTH_STATUS": "a Temporal search attribute's constant",
    "BERTH_ENGINE": "a Temporal search attribute's constant",
    "BERTH_MODEL": "a Temporal search attribute's constant",
    "BERTH_REPLICAS": "a Temporal search attribute's constant",
    "BERTH_INSTANCE_ID": "the marker berth itself puts in each engine's environment",
}
# Settings whose default is right in production (compose leaves them unset), and why.
DEFAULT_IS_RIGHT = {
    "BERTH_TEMPORAL_PORT": "only `berth up`'s embedded dev server; compose sets BERTH_TEMPORAL_ADDRESS",
    "BERTH_UI_PORT": "only `berth up`'s embedded dev server; compose runs temporalio/ui",
    "BERTH_GATEWAY_PORT": "only `berth up`'s Traefik; compose's Traefik takes it as a flag, the worker gets BERTH_GATEWAY_URL",
    "BERTH_PORT_RANGE": "engines get 20000-20999 on the node's loopback",
    "BERTH_TEMPORAL_EXTRA_ARGS": "only `berth up`'s embedded dev server",
    "BERTH_LLAMA_SERVER": "optional: without it llama.cpp runs from the xllamacpp wheel in the image",
    "BERTH_RECONCILE_INTERVAL_S": "30 s is the production period",
    "BERTH_MAX_RESTARTS_PER_MINUTE": "read by `berth up` only; compose restarts its services itself",
    "BERTH_MEMORY_LIMIT": "optional cap below the node's memory",
    "BERTH_VLLM_IMAGE": "vllm/vllm-openai unless an operator pins another",
    "BERTH_VLLM_RUNTIME": "vLLM runs in Docker unless vllm is installed in the worker's image",
    "BERTH_FAULT_INJECTION": "tests only: must stay unset in production",
    "BERTH_WORKFLOW_SANDBOX": "off: the replay tests run every recorded history in the sandbox instead",
    "BERTH_WORKER_METRICS_PORT": "9464 on the host's loopback (the worker uses the host's network), where Prometheus scrapes it",
    "BERTH_TEMPORAL_METRICS_PORT": "only `berth up`'s embedded dev server; compose's Temporal gets PROMETHEUS_ENDPOINT",
    "BERTH_GATEWAY_METRICS_PORT": "compose's Traefik takes it as a flag (default 8082, what Prometheus scrapes)",
    "BERTH_PROMETHEUS_SCRAPE_INTERVAL": "only the prometheus.yml `berth up` writes; compose's is deploy/prometheus/prometheus.yml",
    "BERTH_MODEL_ROOTS": "the worker sees only BERTH_DATA: local models go in $BERTH_DATA/models, always a root",
    "BERTH_API_NODE": "set by `berth up` on its API; compose's API shares no files with the node, which checks paths",
    "BERTH_ALLOW_UNSAFE_ENV": "off: env names that change how the engine loads code are refused (docs/security.md)",
    "BERTH_ALLOW_UNSAFE_ENGINE_ARGS": "off: engine flags that load code from outside the model are refused",
    # the cluster (docs/cluster.md; docker-compose.node.yml runs the other machines)
    "BERTH_CLUSTER_TOKEN": "one machine needs none; a cluster sets the same one on every machine (the node file requires it)",
    "BERTH_NODE_ADDRESS": "127.0.0.1 on one machine; each machine of a cluster sets its own",
    "BERTH_NODE_GRACE_S": "8 s before a silent node is DOWN (docs/cluster.md)",
    "BERTH_FILES_PORT": "8084 on the host's loopback (the worker uses the host's network)",
    "BERTH_NODE_CAPACITY": "the node's memory budget; set only to overcommit on purpose",
    "BERTH_DRAIN_TIMEOUT_S": "read by `berth join` only; compose nodes are drained with `berth drain --wait`",
    "BERTH_TEMPORAL_BIND": "only `berth up`'s embedded dev server; compose publishes Temporal with BERTH_TEMPORAL_PUBLISH",
    "BERTH_TEMPORAL_NAMESPACE": "compose's Temporal has the namespace `default`; the node file passes it for a Temporal of your own",
    "BERTH_TEMPORAL_TLS": "compose's Temporal speaks plain gRPC on its network; the node file passes the TLS options",
    "BERTH_TEMPORAL_TLS_CA": "as BERTH_TEMPORAL_TLS",
    "BERTH_TEMPORAL_TLS_CERT": "as BERTH_TEMPORAL_TLS",
    "BERTH_TEMPORAL_TLS_KEY": "as BERTH_TEMPORAL_TLS",
    "BERTH_TEMPORAL_TLS_SERVER_NAME": "as BERTH_TEMPORAL_TLS",
    "BERTH_TEMPORAL_API_KEY": "as BERTH_TEMPORAL_TLS (the node file takes the key from a file: BERTH_TEMPORAL_API_KEY_FILE)",
    "BERTH_TEMPORAL_API_KEY_FILE": "as BERTH_TEMPORAL_TLS",
}
# What each berth service must be told (its defaults would be wrong in a container).
NEEDED = {
    "worker": {
        "BERTH_HOME", "BERTH_TEMPORAL_ADDRESS", "BERTH_GATEWAY_URL", "BERTH_API_URL", "BERTH_NODE_ID",
        "BERTH_API_TOKEN", "BERTH_SECRET_KEY",
    },
    "api": {"BERTH_TEMPORAL_ADDRESS", "BERTH_API_TOKEN", "BERTH_API_HOST", "BERTH_API_PORT", "BERTH_SECRET_KEY"},
}


# ---- loading, as Compose does ---------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}"
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariable(KeyError):
    pass


def interpolate(value, env: dict[str, str]):
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["braced"] or match["plain"]
        op, arg, current = match["op"], match["arg"], env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    leftover = _VARIABLE.sub("", value)
    assert "$" not in leftover, f"a `$` that Compose cannot interpolate (write $$ for a literal one): {value!r}"
    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, {"BERTH_API_TOKEN": TOKEN, "BERTH_SECRET_KEY": SECRET_KEY})


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume."""
    found = []
    for volume in service.get("volumes") or []:
        source, target, *mode = volume.split(":")
        found.append((source, target, mode[0] if mode else "rw"))
    return found


def published(service: dict) -> dict[int, tuple[str, int]]:
    """container port -> (host ip, host port)."""
    found = {}
    for port in service.get("ports") or []:
        ip, host, container = str(port).rsplit(":", 2) if str(port).count(":") == 2 else ("", *str(port).split(":"))
        found[int(container)] = (ip, int(host))
    return found


def flags(command: list[str]) -> dict[str, str]:
    return {flag.split("=", 1)[0].lower(): flag.split("=", 1)[1] if "=" in flag else "true" for flag in command}


# ---- the schema --------------------------------------------------------------------------------


def test_the_file_is_valid_against_the_compose_specification_schema(compose):
    jsonschema = pytest.importorskip("jsonschema", reason="`pip install jsonschema` to validate against the schema")
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    broken = {**compose, "services": {**compose["services"], "api": {**compose["services"]["api"], "ports": 8000}}}
    assert list(validator.iter_errors(broken)), "the schema must catch a malformed service"


def test_every_dollar_interpolates_and_the_token_and_the_secret_key_are_required(raw):
    with pytest.raises(MissingVariable, match="BERTH_API_TOKEN"):
        interpolate(raw, {"BERTH_SECRET_KEY": SECRET_KEY})
    with pytest.raises(MissingVariable, match="BERTH_SECRET_KEY"):
        interpolate(raw, {"BERTH_API_TOKEN": TOKEN})
    setup = interpolate(raw, {"BERTH_API_TOKEN": TOKEN, "BERTH_SECRET_KEY": SECRET_KEY})["services"]["temporal-setup"]["command"][0]
    assert '"$name"' in setup and "$$" not in setup  # the shell sees its own variable


# ---- images, builds, the Dockerfile ------------------------------------------------------------------


def test_every_service_has_an_image_or_a_build_that_exists(compose):
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), name
        if service.get("build"):
            context = service["build"] if isinstance(service["build"], str) else service["build"]["context"]
            assert (ROOT / context / "Dockerfile").is_file(), name
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image's version ({image})"
    worker, api = (compose["services"][name] for name in BERTH_SERVICES)
    assert worker["image"] == api["image"] and worker["build"] == api["build"] == "."
    assert compose["services"]["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert compose["services"]["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert compose["services"]["traefik"]["image"].startswith("traefik:v3")


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_dockerfile_runs_the_console_script_and_not_as_root(compose):
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    cmd = json.loads(next(args for op, args in instructions if op == "CMD"))
    assert not any(op == "ENTRYPOINT" for op, _ in instructions)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[0] in scripts and scripts[cmd[0]] == "berth.api.cli:main"
    assert cmd[1] in build_parser()._subparsers._group_actions[0].choices  # `berth worker` exists
    assert compose["services"]["worker"]["command"] == cmd
    api = compose["services"]["api"]["command"]
    assert api == ["python", "-m", "berth.api.server"]
    assert 'if __name__ == "__main__":' in (ROOT / "berth" / "api" / "server.py").read_text()
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert compose["services"]["worker"]["user"] == "root" and "user" not in compose["services"]["api"]


def test_the_dockerfile_copies_what_it_installs_and_dockerignore_keeps_it():
    copied = []
    for op, args in dockerfile():
        if op == "COPY":
            *sources, _ = shlex.split(args)
            copied += sources
    assert sorted(copied) == ["README.md", "berth", "pyproject.toml"]  # pyproject's readme is README.md
    assert all((ROOT / source).exists() for source in copied)
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for source in [*copied, "berth/api/cli/__init__.py"]:
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    for heavy in (".venv", ".git"):
        assert heavy in ignored


# ---- what berth reads ----------------------------------------------------------------------------


def berth_variables() -> set[str]:
    """Every BERTH_* name in berth's code (the test harness excluded)."""
    names = set()
    for path in (ROOT / "berth").rglob("*.py"):
        if "testing" not in path.parts:
            names |= set(re.findall(r"\bBERTH_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return names


def test_every_variable_berth_reads_is_set_where_needed_or_has_a_right_default(compose):
    read = berth_variables() - set(NOT_SETTINGS)
    needed = set().union(*NEEDED.values())
    unplaced = read - needed - set(DEFAULT_IS_RIGHT)
    assert not unplaced, f"place each in NEEDED or DEFAULT_IS_RIGHT (and docker-compose.yml): {sorted(unplaced)}"
    assert not (set(DEFAULT_IS_RIGHT) | needed) - read, "a variable listed here that berth no longer reads"
    for name in BERTH_SERVICES:
        env = environment(compose["services"][name])
        assert NEEDED[name] <= set(env), (name, sorted(NEEDED[name] - set(env)))
        assert all(env[key] for key in NEEDED[name]), (name, env)
        unknown = {key for key in env if key.startswith("BERTH_")} - read
        assert not unknown, f"{name}: berth reads no {sorted(unknown)}"
        assert "BERTH_FAULT_INJECTION" not in env
        assert env["BERTH_API_TOKEN"] == TOKEN
        assert env["BERTH_SECRET_KEY"] == SECRET_KEY  # the API seals with the key the worker opens with


# ---- wiring ------------------------------------------------------------------------------------


def test_the_worker_and_traefik_share_the_routes_volume_and_the_hosts_loopback(compose):
    services = compose["services"]
    worker, traefik = services["worker"], services["traefik"]
    settings = Settings.from_env(environment(worker))
    assert worker["network_mode"] == traefik["network_mode"] == "host"  # engines listen on 127.0.0.1

    traefik_flags = flags(traefik["command"])
    routes_in_traefik = traefik_flags["--providers.file.directory"]
    shared = {source for source, target, _ in mounts(worker) if target == str(settings.routes_dir)}
    assert shared and shared == {s for s, t, _ in mounts(traefik) if t == routes_in_traefik}
    assert next(iter(shared)) in compose["volumes"]  # a named volume, the same one

    # the same static configuration as `berth up`'s Traefik (berth.worker.gateway), given as flags
    dev = static_config(settings)
    assert traefik_flags["--providers.file.watch"] == str(dev["providers"]["file"]["watch"]).lower()
    assert traefik_flags["--providers.providersthrottleduration"] == dev["providers"]["providersThrottleDuration"]
    assert traefik_flags["--ping"] == "true"
    assert traefik_flags["--ping.entrypoint"] == dev["ping"]["entryPoint"] == "web"
    gateway = urlsplit(settings.gateway_url)
    assert traefik_flags["--entrypoints.web.address"] == f":{gateway.port}" and gateway.hostname == "127.0.0.1"


def test_addresses_and_ports_agree_between_services(compose):
    services = compose["services"]
    worker_env, api_env = environment(services["worker"]), environment(services["api"])
    worker = Settings.from_env(worker_env)

    # the worker (host network) reaches Temporal and the API where they are published on loopback
    host, port = worker.temporal_address.rsplit(":", 1)
    assert host == "127.0.0.1" and published(services["temporal"])[7233] == ("127.0.0.1", int(port))
    api_url = urlsplit(worker.api_url)  # also what Traefik's forwardAuth asks
    api_port = int(api_env["BERTH_API_PORT"])
    assert api_url.hostname == "127.0.0.1" and published(services["api"])[api_port] == ("127.0.0.1", api_url.port)
    assert api_env["BERTH_API_HOST"] == "0.0.0.0"  # else the published port reaches nothing

    # the API and the UI (compose network) reach Temporal by its service name
    for env in (api_env, environment(services["temporal-ui"])):
        address = env.get("BERTH_TEMPORAL_ADDRESS") or env["TEMPORAL_ADDRESS"]
        assert address == "temporal:7233"
    assert all(ip == "127.0.0.1" for name in ("temporal", "temporal-ui", "api") for ip, _ in published(services[name]).values())


def test_the_worker_has_docker_gpus_and_host_paths_that_mean_the_same_inside(compose):
    worker = compose["services"]["worker"]
    env = environment(worker)
    settings = Settings.from_env(env)
    volumes = mounts(worker)
    assert ("/var/run/docker.sock", "/var/run/docker.sock", "rw") in volumes
    home = str(settings.home)
    assert (home, home, "rw") in volumes  # vLLM's containers mount model folders by host path
    assert PurePosixPath(env["HF_HOME"]).is_relative_to(home)
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert worker["init"] is True
    # the API reads the engine logs the worker writes, read-only
    logs = str(settings.logs_dir)
    assert (logs, logs, "ro") in mounts(compose["services"]["api"])


def test_temporal_runs_on_postgresql_with_berths_search_attributes(compose):
    services = compose["services"]
    temporal = environment(services["temporal"])
    assert temporal["DB"] == "postgres12" and temporal["POSTGRES_SEEDS"] in services
    assert services[temporal["POSTGRES_SEEDS"]]["image"].startswith("postgres:")
    assert temporal["POSTGRES_PWD"] == environment(services["postgresql"])["POSTGRES_PASSWORD"]
    assert services["temporal"]["depends_on"]["postgresql"]["condition"] == "service_healthy"

    setup = services["temporal-setup"]
    assert setup["image"].startswith("temporalio/admin-tools:")
    assert environment(setup)["TEMPORAL_ADDRESS"] == "temporal:7233"
    script = setup["command"][0]
    assert "for name in " + " ".join(SEARCH_ATTRIBUTES) + ";" in script
    assert 'search-attribute create --namespace default --name "$name" --type Keyword' in script
    for name in BERTH_SERVICES:
        assert services[name]["depends_on"]["temporal-setup"]["condition"] == "service_completed_successfully"


# ---- monitoring ------------------------------------------------------------------------------------


def test_prometheus_runs_the_same_jobs_as_berth_up_against_compose_addresses(compose):
    services = compose["services"]
    prometheus = services["prometheus"]
    assert prometheus["network_mode"] == "host"
    config_mount = {t: s for s, t, _ in mounts(prometheus)}
    deployed = ROOT / config_mount["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(deployed.read_text())
    worker = Settings.from_env(environment(services["worker"]))
    # the jobs of `berth up`'s prometheus.yml, with compose's token secret and targets folder
    token = "/run/secrets/" + prometheus["secrets"][0]
    targets = next(t for s, t, _ in mounts(prometheus) if s == str(worker.engine_targets_dir))
    assert config == prometheus_config(worker, token, f"{targets}/*.json")
    assert compose["secrets"][prometheus["secrets"][0]] == {"environment": "BERTH_API_TOKEN"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # each target is where its service listens
    traefik_flags = flags(services["traefik"]["command"])
    assert jobs["gateway"]["static_configs"][0]["targets"] == [traefik_flags["--entrypoints.metrics.address"]]
    assert traefik_flags["--metrics.prometheus.entrypoint"] == "metrics"
    temporal_port = int(environment(services["temporal"])["PROMETHEUS_ENDPOINT"].rsplit(":", 1)[1])
    host, port = jobs["temporal"]["static_configs"][0]["targets"][0].split(":")
    assert published(services["temporal"])[temporal_port] == (host, int(port))
    assert jobs["berth-worker"]["static_configs"][0]["targets"] == [f"127.0.0.1:{worker.worker_metrics_port}"]
    api_port = int(environment(services["api"])["BERTH_API_PORT"])
    assert jobs["berth-api"]["static_configs"][0]["targets"] == [f"127.0.0.1:{published(services['api'])[api_port][1]}"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    volumes = {t: s for s, t, _ in mounts(grafana)}
    provisioning = ROOT / volumes["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    listen = flags(compose["services"]["prometheus"]["command"])["--web.listen-address"]
    assert source["url"] == f"http://{listen}" and grafana["network_mode"] == "host"
    provider = yaml.safe_load((provisioning / "dashboards" / "berth.yml").read_text())["providers"][0]
    dashboard = volumes[f"{provider['options']['path']}/berth.json"]
    panels = json.loads((ROOT / dashboard).read_text())["panels"]
    assert panels and all(t["datasource"]["uid"] == source["uid"] for p in panels for t in p["targets"])


def test_temporal_is_reachable_from_the_compose_network_and_the_hosts_loopback_only(compose):
    """Whoever reaches Temporal's gRPC port or its UI drives every deployment, with no berth token
    (docs/security.md): neither is published beyond 127.0.0.1, nor on the host's network, nor is
    PostgreSQL (Temporal's history) published at all."""
    services = compose["services"]
    for name in ("temporal", "temporal-ui"):
        assert services[name].get("network_mode") != "host", name
        assert published(services[name]) and all(ip == "127.0.0.1" for ip, _ in published(services[name]).values())
    assert published(services["temporal"])[7233] == ("127.0.0.1", 7233)
    assert "ports" not in services["postgresql"] and services["postgresql"].get("network_mode") != "host"
    assert "mTLS" in COMPOSE.read_text()  # the file says what exposing it takes
