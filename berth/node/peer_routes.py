"""A route's servers on every node (docs/cluster.md, "Every gateway serves every deployment").

The same RouteRequest goes to every node's gateway. On node N, the deployment's service lists:
- each instance on N as `http://127.0.0.1:<port>` (engines stay on loopback);
- each instance on another node M as `<gateway URL of M>/_berth/peer/<deployment>/<instance_id>`
  with `preservePath: true` (Traefik 3.7 then appends the request's path, query included, to the
  server's path; without it, Traefik drops the server URL's path and M would answer 404). Those
  requests carry the cluster token (`X-Berth-Cluster-Token`, set by a headers middleware on the
  deployment's routers, present only when a remote server is).
And, for each instance on N, a peer router that M's gateway reaches:
`PathPrefix(/_berth/peer/<deployment>/<instance_id>/) && Header(X-Berth-Cluster-Token, <token>)`
-> strip that prefix, drop the token header -> that engine alone (one server: no balancing again,
never another gateway: no loops; its retry tries the same engine again on a new connection). The
client's own auth was checked by the first gateway.

A lower-priority router per deployment catches a peer path of an instance N no longer has (it left
the route here a moment before the first gateway heard of it) and answers 503 (a service with no
server), which the first gateway's retry sends to another server: a 404 would reach the client.

Names stay the deployment's own (berth.node.route_table.owner): routers `berth-<d>_peer` and
`berth-<d>_peer-<instance>`, services of the same names, middlewares `berth-<d>_peer-strip`,
`berth-<d>_peer-unset` and `berth-<d>_cluster-token`; removal and reconcile work as before.

Fail closed: a route that spans nodes needs the cluster token on this node (berth.common.
cluster_token); without it (or with one that cannot stand inside a rule) route_config refuses
(NODE_MISCONFIGURED): no peer router, no remote server, never a peer path without the token check.
"""

import copy
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from berth.common.cluster_token import CLUSTER_TOKEN_ENV, CLUSTER_TOKEN_FILE, CLUSTER_TOKEN_HEADER
from berth.domain.errors import ErrorCode
from berth.domain.pipeline import RouteRequest
from berth.node.failures import failure_error
from berth.node.route_table import OWNED_PREFIX, PART_SEPARATOR

log = logging.getLogger(__name__)

PEER_PATH = "/_berth/peer"
PEER_PRIORITY = 40  # an instance's peer router
PEER_GONE_PRIORITY = 30  # the deployment's catch-all for instances no longer here
# The transport of every service of a route (defined in the gateway file: berth.node.routes.
# write_gateway_config): a new connection per request, and a short dial timeout.
# - No connection kept: llama.cpp's server closes a kept-alive connection after a streamed answer
#   without saying so (no `Connection: close`), so the next request on it fails. Measured here with
#   sequential streamed chats through one gateway: 5-7% failed (502) with one engine; with two
#   engines and the passive health check, each such failure took an engine out, and 301 of 400
#   failed (503, no server left); with a new connection each time, 0 of 400. A loopback connect
#   costs ~0.1 ms; to a peer gateway, one round trip.
# - 3 s to connect: a peer whose machine is gone (packets dropped, no refusal) costs a request 3 s
#   before the retry takes another server, not Traefik's default 30 s.
UPSTREAM_TRANSPORT = "berth-upstream"
UPSTREAM_DIAL_TIMEOUT = "3s"
# A service whose servers are all other nodes' gateways keeps its connections (Traefik keeps them
# well; a connect per request to another machine is a round trip), with the same dial timeout.
PEERS_TRANSPORT = "berth-peers"
# an instance id stands in a path, a rule's backticks and a router's name
INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,127}$")


@dataclass
class Servers:
    """A route's servers as this node sees them."""

    local: dict[str, int] = field(default_factory=dict)  # instance id -> port on this node
    remote: dict[str, str] = field(default_factory=dict)  # instance id -> URL through its node's gateway
    spans_nodes: bool = False  # another node takes part: peer paths, and so the cluster token, are needed

    def urls(self) -> list[dict]:
        local = [{"url": f"http://127.0.0.1:{port}"} for port in self.local.values()]
        return local + [{"url": url, "preservePath": True} for url in self.remote.values()]

    def __len__(self) -> int:
        return len(self.local) + len(self.remote)


def gateway_base(url: str) -> str | None:
    """`scheme://host[:port]` of a node's gateway URL, or None when it is not one (a path, a query,
    credentials or another scheme: a route must not send the cluster token anywhere odd)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", parts.netloc):
        return None
    return f"{parts.scheme}://{parts.netloc}"


def servers_on(request: RouteRequest, node_id: str) -> Servers:
    """Where this node sends the route's requests. `instances` empty: the route of one node (before
    the cluster, and histories recorded then): `ports` on this node. An instance whose node has no
    usable gateway URL in `nodes`, or whose id or port is malformed, is left out (logged)."""
    if not request.instances:
        return Servers(local={str(i): port for i, port in enumerate(request.servers())})
    found = Servers(spans_nodes=any(node != node_id for node in request.nodes))
    for server in request.instances:
        if not INSTANCE_ID.match(server.instance_id) or not 0 < server.port < 65536:
            log.warning("route %s: server %r left out: malformed", request.deployment, server)
            continue
        if server.node == node_id:
            found.local.setdefault(server.instance_id, server.port)
            continue
        found.spans_nodes = True
        base = gateway_base(request.nodes.get(server.node, ""))
        if base is None:
            log.warning(
                "route %s: instance %s on node %s left out: no usable gateway URL for that node (%r)",
                request.deployment, server.instance_id, server.node, request.nodes.get(server.node),
            )
            continue
        found.remote.setdefault(server.instance_id, f"{base}{peer_path(request.deployment, server.instance_id)}")
    return found


def peer_path(deployment: str, instance_id: str) -> str:
    return f"{PEER_PATH}/{deployment}/{instance_id}"


def no_cluster_token_message(deployment: str, problem: str) -> str:
    return (
        f"this node's worker {problem}, so it publishes no route for {deployment}, which has instances on "
        "other nodes (a peer path without the token check would let anyone past the API's auth): set "
        f"{CLUSTER_TOKEN_ENV} for the worker, or put the cluster's token in $BERTH_HOME/{CLUSTER_TOKEN_FILE} "
        "on the node (the first node's `berth up` made it), then retry"
    )


def checked_cluster_token(deployment: str, token: str | None, rule_safe: re.Pattern) -> str:
    """The cluster token, or NODE_MISCONFIGURED (non-retryable, logged) when there is none or it
    cannot stand inside a Traefik rule's backticks."""
    problem = None
    if not token:
        problem = "has no cluster token"
    elif not rule_safe.match(token):
        problem = "has a cluster token with characters a gateway rule cannot hold (use letters, digits, ._~+/=-)"
    if problem:
        message = no_cluster_token_message(deployment, problem)
        log.error("route for %s refused: %s", deployment, message)
        raise failure_error(ErrorCode.NODE_MISCONFIGURED, message)
    return token


def peer_config(deployment: str, servers: Servers, token: str, entry_point: str, retry: dict) -> dict:
    """The routers, middlewares and services through which other nodes' gateways reach this node's
    instances of the deployment, and the middleware that gives this node's requests to theirs the
    token. Sections as in a route; merged into it by the caller. `retry`: the route's retry
    middleware, which a peer router has too (the same engine again, on a new connection: what it
    dropped before answering; measured: without it, 2 of 150 streamed chats through a three-node
    route came back cut)."""
    name = f"{OWNED_PREFIX}{deployment}"
    routers, middlewares, services = {}, {}, {}
    if servers.remote:
        middlewares[f"{name}{PART_SEPARATOR}cluster-token"] = {
            "headers": {"customRequestHeaders": {CLUSTER_TOKEN_HEADER: token}}
        }
    token_rule = f"Header(`{CLUSTER_TOKEN_HEADER}`, `{token}`)"
    peer = f"{name}{PART_SEPARATOR}peer"
    routers[peer] = {
        "rule": f"PathPrefix(`{PEER_PATH}/{deployment}/`) && {token_rule}",
        "entryPoints": [entry_point], "service": peer, "priority": PEER_GONE_PRIORITY,
    }
    services[peer] = {"loadBalancer": {"servers": []}}  # Traefik answers 503: the first gateway retries
    if servers.local:
        strip, unset, again = f"{peer}-strip", f"{peer}-unset", f"{peer}-retry"
        middlewares[strip] = {"stripPrefix": {"prefixes": [peer_path(deployment, i) for i in servers.local]}}
        middlewares[again] = copy.deepcopy(retry)
        # the engine has no use for the cluster's secret
        middlewares[unset] = {"headers": {"customRequestHeaders": {CLUSTER_TOKEN_HEADER: ""}}}
        for instance_id, port in servers.local.items():
            routers[f"{peer}-{instance_id}"] = {
                "rule": f"PathPrefix(`{peer_path(deployment, instance_id)}/`) && {token_rule}",
                "entryPoints": [entry_point], "middlewares": [strip, unset, again], "service": f"{peer}-{instance_id}",
                "priority": PEER_PRIORITY,
            }
            services[f"{peer}-{instance_id}"] = {"loadBalancer": {
                "servers": [{"url": f"http://127.0.0.1:{port}"}], "serversTransport": f"{UPSTREAM_TRANSPORT}@file"}}
    return {"routers": routers, "middlewares": middlewares, "services": services}
