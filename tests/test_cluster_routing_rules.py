"""What a route says on each node of a cluster (berth.node.peer_routes): pure rules, no servers.
The same routes against real gateways and engines: tests/test_cluster_routing.py."""

import logging

import pytest
from temporalio.exceptions import ApplicationError

from berth.domain.errors import ErrorCode, Failure
from berth.domain.pipeline import RouteRequest, RouteServer
from berth.node.peer_routes import PEERS_TRANSPORT, UPSTREAM_TRANSPORT, gateway_base
from berth.node.route_table import merge, owner, split
from berth.node.routes import RETRY_STATUS, route_config

NODES = {"a": "http://10.0.0.1:8080", "b": "http://10.0.0.2:8080"}
TWO_NODES = RouteRequest(
    deployment="qwen", engine="llamacpp", nodes=NODES,
    instances=[RouteServer(instance_id="qwen-aaaa1111", node="a", port=20001),
               RouteServer(instance_id="qwen-bbbb2222", node="b", port=20002)],
)


def render(request: RouteRequest, node: str, token: str | None = "tok", cluster: str | None = "ct") -> dict:
    return route_config(request, token, node_id=node, cluster_token=cluster)["http"]


def test_a_two_node_route_on_each_node():
    for here, there, local_port, remote in (("a", "b", 20001, "qwen-bbbb2222"), ("b", "a", 20002, "qwen-aaaa1111")):
        local = "qwen-aaaa1111" if here == "a" else "qwen-bbbb2222"
        http = render(TWO_NODES, here)
        balancer = http["services"]["berth-qwen"]["loadBalancer"]
        assert balancer["servers"] == [
            {"url": f"http://127.0.0.1:{local_port}"},
            {"url": f"{NODES[there]}/_berth/peer/qwen/{remote}", "preservePath": True},
        ]
        assert balancer["strategy"] == "p2c" and balancer["passiveHealthcheck"]["maxFailedAttempts"] == 1
        assert balancer["serversTransport"] == f"{UPSTREAM_TRANSPORT}@file"
        for client_router in ("berth-qwen", "berth-qwen_auth"):
            middlewares = http["routers"][client_router]["middlewares"]
            assert middlewares[-3:] == ["berth-qwen_strip", "berth-qwen_cluster-token", "berth-qwen_retry"]
        assert http["middlewares"]["berth-qwen_cluster-token"] == {
            "headers": {"customRequestHeaders": {"X-Berth-Cluster-Token": "ct"}}}
        assert http["middlewares"]["berth-qwen_retry"]["retry"]["status"] == RETRY_STATUS
        # the way in for the other node: this node's own instance only, token checked, to the engine alone
        peer = http["routers"][f"berth-qwen_peer-{local}"]
        assert peer["rule"] == f"PathPrefix(`/_berth/peer/qwen/{local}/`) && Header(`X-Berth-Cluster-Token`, `ct`)"
        assert peer["middlewares"] == ["berth-qwen_peer-strip", "berth-qwen_peer-unset", "berth-qwen_peer-retry"]
        assert http["middlewares"]["berth-qwen_peer-retry"] == http["middlewares"]["berth-qwen_retry"], (
            "the same engine again on a new connection; one server: no balancing, no loop")
        assert http["services"][peer["service"]] == {"loadBalancer": {
            "servers": [{"url": f"http://127.0.0.1:{local_port}"}], "serversTransport": f"{UPSTREAM_TRANSPORT}@file"}}
        assert http["middlewares"]["berth-qwen_peer-strip"] == {"stripPrefix": {"prefixes": [f"/_berth/peer/qwen/{local}"]}}
        assert http["middlewares"]["berth-qwen_peer-unset"] == {
            "headers": {"customRequestHeaders": {"X-Berth-Cluster-Token": ""}}}
        assert f"berth-qwen_peer-{remote}" not in http["routers"], "no way in to another node's instance"
        gone = http["routers"]["berth-qwen_peer"]
        assert gone["rule"] == "PathPrefix(`/_berth/peer/qwen/`) && Header(`X-Berth-Cluster-Token`, `ct`)"
        assert gone["priority"] < peer["priority"]
        assert http["services"]["berth-qwen_peer"] == {"loadBalancer": {"servers": []}}, "503: the first gateway retries"
        for section in http.values():
            for name in section:
                assert owner(name) == "qwen", name
        assert split(merge({"qwen": {"http": http}})) == {"qwen": {"http": http}}


def test_a_node_without_an_instance_of_its_own_sends_everything_to_the_others():
    request = TWO_NODES.model_copy(update={"nodes": {**NODES, "c": "http://10.0.0.3:8080"}})
    http = render(request, "c")
    urls = [s["url"] for s in http["services"]["berth-qwen"]["loadBalancer"]["servers"]]
    assert urls == ["http://10.0.0.1:8080/_berth/peer/qwen/qwen-aaaa1111", "http://10.0.0.2:8080/_berth/peer/qwen/qwen-bbbb2222"]
    assert http["services"]["berth-qwen"]["loadBalancer"]["serversTransport"] == f"{PEERS_TRANSPORT}@file", (
        "gateways only: connections kept")
    assert not [name for name in http["routers"] if name.startswith("berth-qwen_peer-")]


def test_one_node_only_is_the_route_of_before():
    """All instances here and no other node: the same route as the `ports` form (no peer path, no
    cluster token needed)."""
    request = RouteRequest(deployment="q", engine="llamacpp", nodes={"a": NODES["a"]}, instances=[
        RouteServer(instance_id="q-1", node="a", port=9000), RouteServer(instance_id="q-2", node="a", port=9001)])
    old = RouteRequest(deployment="q", engine="llamacpp", ports=[9000, 9001])
    assert render(request, "a", cluster=None) == render(old, "a", cluster=None)
    one = request.model_copy(update={"instances": request.instances[:1]})
    assert render(one, "a", cluster=None) == render(RouteRequest(deployment="q", engine="llamacpp", port=9000), "a")


def test_servers_that_cannot_be_reached_safely_are_left_out(caplog):
    caplog.set_level(logging.WARNING)
    bad_urls = ["", "ftp://10.0.0.9:21", "http://10.0.0.9:8080/path", "http://u:p@10.0.0.9:8080",
                "http://10.0.0.9:8080?x=1", "http://10.0.0.9:8080#f", "http://10.0.0.9:port", "http://a b:1", "10.0.0.9:8080"]
    for url in bad_urls:
        request = RouteRequest(deployment="q", engine="llamacpp", nodes={"a": NODES["a"], "z": url}, instances=[
            RouteServer(instance_id="q-1", node="a", port=9000), RouteServer(instance_id="q-9", node="z", port=9009)])
        http = render(request, "a")
        assert http["services"]["berth-q"]["loadBalancer"]["servers"] == [{"url": "http://127.0.0.1:9000"}], url
    assert "no usable gateway URL" in caplog.text
    unknown = RouteRequest(deployment="q", engine="llamacpp", nodes={"a": NODES["a"]}, instances=[
        RouteServer(instance_id="q-1", node="a", port=9000), RouteServer(instance_id="q-9", node="gone", port=9009)])
    assert render(unknown, "a")["services"]["berth-q"]["loadBalancer"]["servers"] == [{"url": "http://127.0.0.1:9000"}]
    for instance_id in ("q`1", "../x", "q/1", "q 1", "", "-q"):
        odd = RouteRequest(deployment="q", engine="llamacpp", nodes=NODES, instances=[
            RouteServer(instance_id=instance_id, node="a", port=9000), RouteServer(instance_id="q-2", node="b", port=9001)])
        http = render(odd, "a")
        assert [s["url"] for s in http["services"]["berth-q"]["loadBalancer"]["servers"]] == [
            "http://10.0.0.2:8080/_berth/peer/q/q-2"], instance_id
        assert not any(instance_id in router["rule"] for router in http["routers"].values() if instance_id)


@pytest.mark.parametrize("url, base", [
    ("http://10.0.0.1:8080", "http://10.0.0.1:8080"), ("http://10.0.0.1:8080/", "http://10.0.0.1:8080"),
    ("https://node-2.lan", "https://node-2.lan"), ("http://[fd00::2]:8080", "http://[fd00::2]:8080"),
    ("http://10.0.0.1:8080/x", None), ("javascript:alert(1)", None), ("http://:8080", None),
])
def test_gateway_urls(url, base):
    assert gateway_base(url) == base


@pytest.mark.parametrize("cluster, problem", [(None, "has no cluster token"), ("", "has no cluster token"),
                                              ("a`b", "characters a gateway rule cannot hold"),
                                              ("a b", "characters a gateway rule cannot hold")])
def test_a_route_across_nodes_without_a_usable_cluster_token_is_refused(cluster, problem, caplog):
    for node in ("a", "b", "c"):  # with an instance here, without one, and peers only
        with pytest.raises(ApplicationError) as refused:
            render(TWO_NODES, node, cluster=cluster)
        assert refused.value.type == ErrorCode.NODE_MISCONFIGURED.value and refused.value.non_retryable
        failure = Failure.model_validate(refused.value.details[0])
        for words in (problem, "qwen", "BERTH_CLUSTER_TOKEN", "$BERTH_HOME/cluster-token"):
            assert words in failure.message, words
    assert "route for qwen refused" in caplog.text


def test_without_an_api_token_the_route_across_nodes_checks_every_call_with_the_api():
    http = render(TWO_NODES, "a", token=None)
    client = [name for name in http["routers"] if not name.startswith("berth-qwen_peer")]
    assert client == ["berth-qwen_auth"]
    assert http["routers"]["berth-qwen_auth"]["middlewares"][0] == "berth-auth@file"
    assert "berth-qwen_peer-qwen-aaaa1111" in http["routers"], "peers come in with the cluster token"


def test_public_routes_span_nodes_too():
    http = render(TWO_NODES.model_copy(update={"public": True}), "a", token=None)
    assert http["routers"]["berth-qwen"]["middlewares"] == ["berth-qwen_strip", "berth-qwen_cluster-token", "berth-qwen_retry"]
    assert "Header(`X-Berth-Cluster-Token`, `ct`)" in http["routers"]["berth-qwen_peer-qwen-aaaa1111"]["rule"]


def test_the_node_is_this_workers_own_by_default(monkeypatch):
    monkeypatch.setenv("BERTH_NODE_ID", "b")
    http = route_config(TWO_NODES, "tok", cluster_token="ct")["http"]
    assert "berth-qwen_peer-qwen-bbbb2222" in http["routers"]


@pytest.mark.parametrize("address, web", [(None, "127.0.0.1:8080"), ("127.0.0.32", "127.0.0.32:8080"),
                                          ("10.0.0.2", "10.0.0.2:8080"), ("fd00::2", "[fd00::2]:8080")])
def test_the_gateway_binds_on_the_node_address_and_keeps_its_metrics_on_loopback(tmp_path, address, web):
    from berth.settings import Settings
    from berth.worker.gateway import static_config

    env = {"BERTH_HOME": str(tmp_path), "BERTH_GATEWAY_PORT": "8080", "BERTH_GATEWAY_METRICS_PORT": "8082"}
    if address:
        env["BERTH_NODE_ADDRESS"] = address
    config = static_config(Settings.from_env(env))
    assert config["entryPoints"]["web"]["address"] == web
    assert config["entryPoints"]["metrics"]["address"] == "127.0.0.1:8082", "never where the network reaches"
