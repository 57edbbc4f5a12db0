"""Every gateway serves every deployment (issue 21, item 6) against real gateways and engines.

Three nodes on one host (127.0.0.31-33), each its own home, gateway (Traefik, berth's static config)
and a llama.cpp engine of the tiny GGUF started by berth's launch code; the first node has the API
token, the other two joined without it (their gateways ask the API about every call: a stand-in
running berth's own /v1/auth/check). The same RouteRequest is written on each node by the real
configure_route activity. Requests are counted on the engines (llama.cpp's /metrics), never in berth.
"""

import asyncio
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpx
import pytest
import yaml

from berth.domain.pipeline import RouteRequest, RouteServer
from berth.node.route_table import RouteTable
from berth.testing.gateway_nodes import StandinApi, make_node, served_requests
from berth.testing.harness import processes_with_home

ADDRESSES = {"n1": "127.0.0.31", "n2": "127.0.0.32", "n3": "127.0.0.33"}
ADMIN = "admin-" + secrets.token_urlsafe(16)
NAME = "cr"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
LIVE_WITHIN_S = 1.0  # the issue: a change of a deployment's servers reaches every gateway within 1 s


class _Counted(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_gguf):
    root = tmp_path_factory.mktemp("cluster-routing")
    (root / "api").mkdir()
    api = StandinApi(root / "api", ADMIN).start()
    token = secrets.token_urlsafe(32)
    nodes = {n: make_node(root, n, address, api.url, token, api_token=ADMIN if n == "n1" else None)
             for n, address in ADDRESSES.items()}
    # what a node's file route would be (the files helper's own): reachable with the cluster token only
    files = ThreadingHTTPServer(("127.0.0.1", 0), _Counted)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    for node in nodes.values():
        (node.settings.routes_dir / "_test-files.yml").write_text(yaml.safe_dump({"http": {
            "routers": {"test-files": {"rule": f"PathPrefix(`/_berth/files/`) && Header(`X-Berth-Cluster-Token`, `{token}`)",
                                       "service": "test-files", "entryPoints": ["web"]}},
            "services": {"test-files": {"loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{files.server_port}"}]}}},
        }}))
    try:
        instances = []
        for n, node in nodes.items():
            node.start_gateway()
            port = node.start_engine(NAME, f"{NAME}-{n}aaaa", tiny_gguf)
            instances.append(RouteServer(instance_id=f"{NAME}-{n}aaaa", node=n, port=port))
        yield SimpleNamespace(api=api, nodes=nodes, token=token, instances=instances, files=_Counted, model=tiny_gguf)
    finally:
        for node in nodes.values():
            node.stop_engines()
            node.kill_gateway()
        api.stop()
        files.shutdown()
        files.server_close()
    for node in nodes.values():
        assert processes_with_home(node.settings.home) == [], node.node_id


def route(cluster, instances, name=NAME) -> RouteRequest:
    return RouteRequest(deployment=name, engine="llamacpp", instances=instances,
                        nodes={n: node.url for n, node in cluster.nodes.items()})


async def publish(cluster, request: RouteRequest) -> None:
    """The same request to every node's configure_route, as the deployment workflow fans it out (one
    after the other here: each runs with its node's environment, which is the process's)."""
    endpoints = [await node.configure(request) for node in cluster.nodes.values()]
    assert endpoints == [f"{node.url}/models/{request.deployment}/v1" for node in cluster.nodes.values()]
    await asyncio.sleep(LIVE_WITHIN_S)


def counts(cluster) -> dict[str, float]:
    return {server.instance_id: served_requests(server.port) for server in cluster.instances}


def chat(http: httpx.Client, node, name=NAME, **kwargs) -> httpx.Response:
    return http.post(f"{node.url}/models/{name}/v1/chat/completions", json=CHAT, **kwargs)


def admin() -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)


async def test_a_request_through_any_gateway_reaches_instances_on_every_node(cluster):
    await publish(cluster, route(cluster, cluster.instances))
    for n, node in cluster.nodes.items():
        before, checks = counts(cluster), cluster.api.checks
        with admin() as http:
            for _ in range(60):
                response = chat(http, node)
                assert response.status_code == 200, (n, response.text)
        share = {i: count - before[i] for i, count in counts(cluster).items()}
        assert sum(share.values()) == 60, (n, share)
        assert all(count >= 6 for count in share.values()), (n, share)
        # the first node has the API token (its fast router); a joined node asks the API each time
        assert cluster.api.checks - checks == (0 if n == "n1" else 60), n
    table = RouteTable(cluster.nodes["n2"].settings.routes_dir).route(NAME)["http"]
    assert [s["url"] for s in table["services"][f"berth-{NAME}"]["loadBalancer"]["servers"]] == [
        f"http://127.0.0.1:{cluster.instances[1].port}",
        f"{cluster.nodes['n1'].url}/_berth/peer/{NAME}/{NAME}-n1aaaa",
        f"{cluster.nodes['n3'].url}/_berth/peer/{NAME}/{NAME}-n3aaaa",
    ]


async def test_the_clients_auth_is_checked_by_the_first_gateway(cluster):
    before = counts(cluster)
    with httpx.Client(timeout=30) as http:
        for node in cluster.nodes.values():
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            # the cluster token is no client credential on /models/
                            {"X-Berth-Cluster-Token": cluster.token},
                            {"Authorization": f"Bearer {cluster.token}"}):
                response = chat(http, node, headers=headers)
                assert response.status_code == 401, (node.node_id, headers, response.text)
    assert counts(cluster) == before, "an engine served a call that had no valid credential"


async def test_a_peer_path_without_the_cluster_token_reaches_nothing(cluster):
    before = counts(cluster)
    with httpx.Client(timeout=30) as http:
        for server in cluster.instances:
            node = cluster.nodes[server.node]
            peer = f"{node.url}/_berth/peer/{NAME}/{server.instance_id}/v1/chat/completions"
            for headers in ({}, {"X-Berth-Cluster-Token": "wrong"}, {"X-Berth-Cluster-Token": cluster.token[:-1]},
                            {"Authorization": f"Bearer {ADMIN}"}):
                assert http.post(peer, json=CHAT, headers=headers).status_code == 404, (peer, headers)
            # another node's instance is not this node's to serve: the catch-all answers 503
            elsewhere = cluster.nodes["n1" if server.node != "n1" else "n2"]
            response = http.post(f"{elsewhere.url}/_berth/peer/{NAME}/{server.instance_id}/v1/chat/completions",
                                 json=CHAT, headers={"X-Berth-Cluster-Token": cluster.token})
            assert response.status_code == 503, response.text
        assert counts(cluster) == before, "an engine served a peer request without the token"
        # with it, the engine alone answers (what the first gateway does)
        server = cluster.instances[2]
        response = http.post(f"{cluster.nodes['n3'].url}/_berth/peer/{NAME}/{server.instance_id}/v1/chat/completions",
                             json=CHAT, headers={"X-Berth-Cluster-Token": cluster.token})
        assert response.status_code == 200, response.text
        assert served_requests(server.port) == before[server.instance_id] + 1


async def test_a_client_path_cannot_climb_out_of_the_peer_path(cluster):
    """The first gateway adds the cluster token to what it sends a peer; a path that a peer would
    clean up into another of its routes (its file server's) would carry the token there."""
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        base = f"{cluster.nodes['n1'].url}/models/{NAME}"
        assert httpx.get(f"{cluster.nodes['n2'].url}/_berth/files/x",
                         headers={"X-Berth-Cluster-Token": cluster.token}).status_code == 200, "the stand-in is live"
        hits = cluster.files.hits
        for path in ("/../../_berth/files/x", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/_berth/files/x",
                     "/..%2f..%2f..%2f..%2f_berth/files/x", "/%252e%252e/%252e%252e/%252e%252e/%252e%252e/_berth/files/x",
                     "/%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2F_berth%2Ffiles/x", "//..//..//..//..//_berth/files/x",
                     "/v1/..%5c..%5c..%5c..%5c_berth/files/x"):
            for _ in range(6):  # p2c: every server gets its turn
                request = http.build_request("GET", base)
                request.url = request.url.copy_with(raw_path=(f"/models/{NAME}" + path).encode())
                response = http.send(request)
                assert response.status_code in (400, 404), (path, response.status_code, response.text[:200])
        assert cluster.files.hits == hits, "a client's path reached a peer's file route"


STREAMS = 150


def streamed(http: httpx.Client, url: str, n: int) -> list:
    """n sequential streamed chats on one keep-alive client; what went wrong with each that failed."""
    failed = []
    for i in range(n):
        try:
            with http.stream("POST", url, json={**CHAT, "max_tokens": 4, "stream": True}) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            if response.status_code != 200 or len(lines) < 2 or lines[-1] != "data: [DONE]":
                failed.append((i, response.status_code, lines[-1:]))
        except httpx.HTTPError as error:
            failed.append((i, repr(error)[:120]))
    return failed


async def test_streamed_answers_cross_gateways_whole(cluster):
    """Sequential streamed chats through one engine on another node (n1 -> n2's gateway -> n2's
    engine) and through the three-node route: none cut or refused. llama.cpp's server drops a
    kept-alive connection after a streamed answer: these routes open a new connection per request,
    and their retry (the peer router's too) sends a request the engine dropped again. (A route with
    one engine on its own node keeps its shape of before, bench P4: berth.node.routes.)"""
    far = cluster.instances[1].model_copy(update={"instance_id": "far-n2aaaa"})
    await publish(cluster, route(cluster, [far], name="far"))
    before = served_requests(far.port)
    n1 = cluster.nodes["n1"].url
    with admin() as http:
        for name in ("far", NAME):
            failed = streamed(http, f"{n1}/models/{name}/v1/chat/completions", STREAMS)
            assert failed == [], (name, len(failed), failed[:3])
    assert served_requests(far.port) > before + STREAMS
    for node in cluster.nodes.values():
        await node.remove("far")
    await asyncio.sleep(LIVE_WITHIN_S)
    with admin() as http:
        for node in cluster.nodes.values():
            gone = chat(http, node, name="far")
            assert gone.status_code == 404, (node.node_id, gone.status_code, gone.text[:300])
            assert "far" not in RouteTable(node.settings.routes_dir).deployments()


async def test_an_instance_removed_from_the_route_leaves_every_gateway(cluster):
    kept, gone = cluster.instances[:2], cluster.instances[2]
    await publish(cluster, route(cluster, kept))
    before = counts(cluster)
    with admin() as http:
        for node in cluster.nodes.values():
            for _ in range(30):
                assert chat(http, node).status_code == 200
        assert served_requests(gone.port) == before[gone.instance_id], "a gateway still sent to the removed instance"
        response = http.post(f"{cluster.nodes['n3'].url}/_berth/peer/{NAME}/{gone.instance_id}/v1/chat/completions",
                             json=CHAT, headers={"X-Berth-Cluster-Token": cluster.token})
        assert response.status_code == 503, "its peer router left with it"
    assert sum(counts(cluster).values()) - sum(before.values()) == 90
    await publish(cluster, route(cluster, cluster.instances))


async def test_a_peers_engine_that_dies_costs_no_request(cluster):
    """The peer's gateway answers 502 for an engine that no longer listens; the first gateway's retry
    sends the request to another server (before the workflow takes the instance out)."""
    dead = cluster.instances[2]
    cluster.nodes["n3"].kill_engine(dead.instance_id)
    failed = []
    with admin() as http:
        for n in ("n1", "n2", "n3"):
            for _ in range(60):
                response = chat(http, cluster.nodes[n])
                if response.status_code != 200:
                    failed.append((n, response.status_code, response.text[:100]))
    assert failed == []
    # the workflow replaces it: a new instance on n3, in the route on every node
    cluster.nodes["n3"].stop_engines()
    port = cluster.nodes["n3"].start_engine(NAME, f"{NAME}-n3bbbb", cluster.model)
    cluster.instances[2] = RouteServer(instance_id=f"{NAME}-n3bbbb", node="n3", port=port)
    await publish(cluster, route(cluster, cluster.instances))


async def test_a_dead_peer_gateway_costs_no_request(cluster):
    """n2's Traefik is killed: requests through the surviving gateways still succeed (the retry sends
    a refused connection to another server, and the passive check then leaves n2 out)."""
    cluster.nodes["n2"].kill_gateway()
    before = counts(cluster)
    failed = []
    with admin() as http:
        for n in ("n1", "n3"):
            for _ in range(200):
                try:
                    response = chat(http, cluster.nodes[n])
                    if response.status_code != 200:
                        failed.append((n, response.status_code, response.text[:100]))
                except httpx.HTTPError as error:
                    failed.append((n, repr(error)))
    assert failed == [], failed[:5]
    after = counts(cluster)
    n2 = cluster.instances[1].instance_id
    assert sum(after.values()) - sum(before.values()) == 400
    assert after[n2] - before[n2] <= 2, "n2's engine is reachable through n2's gateway only"
