"""Routes through the gateway: each deployment's route in the route table, one file of the folder
$BERTH_HOME/routes/ that Traefik's file provider watches (berth.node.route_table; the worker
coalesces the writes of concurrent activities: berth.node.route_publisher). A written route
is live ~0.1 s later (with hundreds of routes, up to ~1 s); a removed one takes its routers away
(the gateway then answers 404 for that path).

Model endpoints need the admin token or an inference key unless the deployment is public. Two
routers per deployment: a fast one whose rule matches `Authorization: Bearer <admin token>` exactly
and goes straight to the engine (no extra hop), and a fallback for everything else under the prefix
that asks the API's /v1/auth/check first (Traefik forwardAuth): an inference key that opens the
deployment passes, a wrong or missing token gets the API's 401 (a key scoped elsewhere its 403)
with its message, an oddly written admin token still passes. The route table holds the token: it
is 0600.

A node whose worker has no API token (a node that joined a cluster: `berth join` gives it the
cluster token, not the API token) gets the forwardAuth router alone: every call is checked by the
cluster's API (BERTH_API_URL), one hop more for the admin token. Still fail closed: never a route
without auth; an API that cannot be reached makes Traefik answer 500, never pass the call.

Every node's gateway serves every deployment: the servers on other nodes are reached through their
gateways with the cluster token (berth.node.peer_routes, docs/cluster.md).
"""

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from berth.common.api_token import load_api_token
from berth.common.atomic_write import write_atomically
from berth.common.cluster_token import load_cluster_token
from berth.domain.pipeline import RouteRequest
from berth.node.gateway_certificate import certificate_path, read_certificate
from berth.node.peer_routes import (
    PEERS_TRANSPORT, UPSTREAM_DIAL_TIMEOUT, UPSTREAM_TRANSPORT, checked_cluster_token, peer_config, servers_on,
)
from berth.node.route_publisher import route_publisher
from berth.node.route_table import OWNED_PREFIX, PART_SEPARATOR, STAGING_DIR, Route, RouteTable
from berth.settings import Settings

log = logging.getLogger(__name__)

GATEWAY_ENTRYPOINT = "web"
GATEWAY_FILE = "_berth-gateway.yml"  # what the routes share; names starting with "_" are never deployments
AUTH_MIDDLEWARE = "berth-auth"
RULE_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # may stand inside a Traefik rule's backticks
# No Traefik health check on an engine: berth's own watch (await_ready, then supervise) is what says
# whether an engine serves, and the workflow keeps only serving instances in the route (an instance
# leaves it before it is stopped and the moment its engine is seen failing). Measured with 700
# stand-in deployments: the checks (two per service, one per router) kept Traefik at ~19% of a core
# for good, and each reload restarted all of them, so after the last deployment Traefik worked
# through its queue of reloads for ~70 s at a full core (~25 s without them, then 0%). They also
# made the gateway lag an engine that was still loading when a check came.
#
# Several instances (docs/replicas.md): `p2c` balancing (two servers drawn at random, the one with
# fewer requests in flight wins). LLM requests last from milliseconds to minutes, so in-flight count
# is the load that matters: round robin (`wrr`) keeps sending to an engine busy with long answers,
# and `leasttime` ranks by an average response time that, with few requests, sends nearly all of
# them to whichever engine answered fastest once. The `retry` middleware sends a request to another
# server when its connection failed before any header reached the backend (an engine that just
# died): safe for POST, since the engine saw nothing.
#
# A route with one engine on this node keeps the shape it had before the cluster: no retry, kept
# connections (bench P4: the gateway adds ~0.3 ms). Measured here (GET /health, one gateway, load ~3
# on 2 cores): the retry with `status` costs ~0.6 ms p50 a request, a new connection per request
# ~0.2 ms. The price, already paid before the cluster: llama.cpp's server drops a kept-alive
# connection after a streamed answer, and 5-7% of sequential streamed chats through such a route
# fail (502); with the retry (one server too) 0 of 400. Several servers: the retry, and a new
# connection per request (berth.node.peer_routes.UPSTREAM_TRANSPORT); servers on other nodes only:
# kept connections to their gateways, whose peer routers have the retry and a new connection.
LB_STRATEGY = "p2c"
RETRY_ATTEMPTS = 3
RETRY_INTERVAL = "10ms"
PASSIVE_FAILURE_WINDOW = "10s"
RETRY_STATUS = ["502", "503"]


def route_config(
    request: RouteRequest, token: str | None, *, node_id: str | None = None, cluster_token: str | None = None
) -> Route:
    """The deployment's routers, middleware and service on this node (`node_id`, by default
    Settings.from_env().node_id, read only when the request lists `instances`); each name says whose
    it is (route_table.owner). `token`: the API token (None: the forwardAuth router alone);
    `cluster_token`: needed when the route spans nodes (berth.node.peer_routes), else refused
    (a non-retryable NODE_MISCONFIGURED)."""
    if request.instances and node_id is None:
        node_id = Settings.from_env().node_id
    servers = servers_on(request, node_id or "")
    if servers.spans_nodes:
        cluster_token = checked_cluster_token(request.deployment, cluster_token, RULE_SAFE_TOKEN)
    name = f"{OWNED_PREFIX}{request.deployment}"
    prefix_rule = f"PathPrefix(`/models/{request.deployment}/`)"
    strip = f"{name}{PART_SEPARATOR}strip"
    middlewares = {strip: {"stripPrefix": {"prefixes": [f"/models/{request.deployment}"]}}}
    own = [strip]
    retry_config = {"retry": {
        "attempts": RETRY_ATTEMPTS, "initialInterval": RETRY_INTERVAL,
        # 502: Traefik's own answer when the engine's connection broke (an engine killed while
        # answering), here or behind another node's gateway; 503: another node's gateway no
        # longer has the instance (berth.node.peer_routes), or an engine still loading. A chat
        # request is safe to send again to another engine (no side effect)
        "status": RETRY_STATUS, "retryNonIdempotentMethod": True,
    }}
    peers = (peer_config(request.deployment, servers, cluster_token, GATEWAY_ENTRYPOINT, retry_config)
             if servers.spans_nodes else {})
    if servers.remote:  # this node's requests to other nodes' gateways carry the cluster token
        own.append(f"{name}{PART_SEPARATOR}cluster-token")
    if len(servers) > 1:  # one server: the route as before the cluster (bench P4), see below
        retry = f"{name}{PART_SEPARATOR}retry"
        middlewares[retry] = retry_config
        own.append(retry)
    if request.public:
        routers = {name: _router(prefix_rule, own, name)}
    else:  # a node without the API token (a joined node): every call is checked by the API
        routers = {f"{name}{PART_SEPARATOR}auth": _router(prefix_rule, [f"{AUTH_MIDDLEWARE}@file", *own], name, 10)}
        if token and RULE_SAFE_TOKEN.match(token):
            token_rule = f"{prefix_rule} && Header(`Authorization`, `Bearer {token}`)"
            routers[name] = _router(token_rule, own, name, 20)
    balancer: dict = {"servers": servers.urls()}
    if len(servers) > 1:
        balancer["strategy"] = LB_STRATEGY
        # a server that refused a connection sits out (retries then go to the others) until the
        # workflow's route change, which resets it: an engine that died gets no more attempts
        balancer["passiveHealthcheck"] = {"failureWindow": PASSIVE_FAILURE_WINDOW, "maxFailedAttempts": 1}
    if servers.remote and not servers.local:  # other gateways only: connections kept
        balancer["serversTransport"] = f"{PEERS_TRANSPORT}@file"
    else:  # engines here, even one alone: a new connection per request (llama.cpp drops a kept one
        # after a streamed answer without saying so: 5 of 300 back-to-back streamed chats got 502)
        balancer["serversTransport"] = f"{UPSTREAM_TRANSPORT}@file"
    services = {name: {"loadBalancer": balancer}}
    routers.update(peers.get("routers", {}))
    middlewares.update(peers.get("middlewares", {}))
    services.update(peers.get("services", {}))
    return {"http": {"routers": routers, "middlewares": middlewares, "services": services}}


def _router(rule: str, middlewares: list[str], service: str, priority: int | None = None) -> dict:
    router = {"rule": rule, "entryPoints": [GATEWAY_ENTRYPOINT], "middlewares": middlewares, "service": service}
    if priority is not None:
        router["priority"] = priority
    return router


async def publish_route(settings: Settings, request: RouteRequest, env: Mapping[str, str] = os.environ) -> str:
    """configure_route's work: render the route for this node (settings.node_id, its API and cluster
    tokens), put it in its route table through the worker's publisher; returns the public endpoint."""
    route = route_config(
        request, load_api_token(settings, env), node_id=settings.node_id, cluster_token=load_cluster_token(settings, env)
    )
    await route_publisher(settings.routes_dir).put(request.deployment, route)
    return f"{settings.gateway_url}/models/{request.deployment}/v1"


def write_route(routes_dir: Path, request: RouteRequest, token: str | None = None) -> Path:
    """Put the route in the table now (a process with no publisher: a test, a tool); returns the
    table's file. Unchanged routes are not written again (no reload for Traefik)."""
    table = RouteTable(routes_dir)
    table.apply({request.deployment: route_config(request, token)})
    return table.path


def delete_route(routes_dir: Path, deployment: str) -> None:
    RouteTable(routes_dir).apply({deployment: None})


def routed(routes_dir: Path) -> set[str]:
    """The deployments that have a route in the gateway."""
    return RouteTable(routes_dir).deployments()


def adopt_route_files(settings: Settings) -> list[str]:
    """Routes an earlier berth left as files of their own (`routes/<deployment>.yml`): into the
    route table, remade with today's names and token, then the files go. Returns the deployments."""
    token = load_api_token(settings)
    adopted: dict[str, Route] = {}
    files = []
    for path in sorted(settings.routes_dir.glob("*.yml")):
        if path.name.startswith("_"):  # the gateway's file, the route table
            continue
        try:
            config = (yaml.safe_load(path.read_text()) or {})["http"]
            service = config["services"].get(f"{OWNED_PREFIX}{path.stem}")
            if service is None:  # not one berth wrote (a file put there by hand): Traefik's alone
                continue
            url = service["loadBalancer"]["servers"][0]["url"]
            port = int(url.rsplit(":", 1)[1].strip("/"))
        except (OSError, yaml.YAMLError, LookupError, AttributeError, TypeError, ValueError) as error:
            log.warning("route file %s could not be read (%s): left as it is", path, error)
            continue
        public = not any(f"{AUTH_MIDDLEWARE}@file" in (router.get("middlewares") or [])
                         for router in (config.get("routers") or {}).values())
        request = RouteRequest(deployment=path.stem, port=port, engine="", public=public)
        adopted[path.stem] = route_config(request, token)
        files.append(path)
    if adopted:
        RouteTable(settings.routes_dir).apply(adopted)
        for path in files:
            path.unlink(missing_ok=True)
    return sorted(adopted)


def write_gateway_config(settings: Settings) -> Path:
    """What every route shares: the forwardAuth middleware that asks the API about a token, and,
    once it has been made, the default TLS certificate that spares Traefik a new RSA key at each
    route change (berth.node.gateway_certificate); and the transport of requests to other nodes'
    gateways (berth.node.peer_routes: a short dial timeout)."""
    config: dict = {
        "http": {
            "middlewares": {
                AUTH_MIDDLEWARE: {
                    "forwardAuth": {
                        "address": f"{settings.api_url}/v1/auth/check",
                        "authRequestHeaders": ["Authorization"],
                    }
                }
            },
            "serversTransports": {  # 3 s to connect; to engines a new connection per request (-1: none kept)
                UPSTREAM_TRANSPORT: {"forwardingTimeouts": {"dialTimeout": UPSTREAM_DIAL_TIMEOUT}, "maxIdleConnsPerHost": -1},
                PEERS_TRANSPORT: {"forwardingTimeouts": {"dialTimeout": UPSTREAM_DIAL_TIMEOUT}},
            },
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
