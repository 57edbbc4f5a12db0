"""`berth join` against real servers: what it refuses before starting anything, and a joined node
that stops on SIGTERM (drain, then worker, engines, gateway) leaving no process. Addresses
127.0.0.51-59 (docs/cluster.md: each suite its own)."""

import asyncio
import os
import subprocess
import sys
import time

import psutil
import pytest

from berth.testing.cluster_harness import Cluster
from berth.testing.harness import free_port, processes_with_home
from berth.worker.gateway import static_config


def berth(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    """A `berth` command as a user on the first node runs it (its API, its token)."""
    return subprocess.run([sys.executable, "-m", "berth.api.cli", *args], env=cluster.first.env,
                          capture_output=True, text=True, timeout=60)


def wait_for_nodes(cluster: Cluster, statuses: dict[str, str], timeout_s: float = 30) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    with cluster.api() as api:
        while True:
            response = api.get("/v1/nodes")
            nodes = {node["id"]: node for node in response.json().get("nodes", [])} if response.is_success else {}
            if all(nodes.get(node, {}).get("status") == status for node, status in statuses.items()):
                return nodes
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes not {statuses} within {timeout_s} s: {response.text}")
            time.sleep(0.1)


def join(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if not key.startswith("BERTH_")}
    return subprocess.run(
        [sys.executable, "-m", "berth.api.cli", "join", *args],
        env={**base, **env}, capture_output=True, text=True, timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = Cluster(tmp_path_factory.mktemp("join-cluster"), ["127.0.0.51", "127.0.0.52", "127.0.0.53"],
                      extra_env={"BERTH_MEMORY_LIMIT": "1GiB"})
    try:
        running.start()
        yield running
    finally:
        left = running.close()
        assert not left, f"left behind: {left}"


def test_join_without_anything_names_each_missing_piece(tmp_path):
    result = join({"BERTH_HOME": str(tmp_path / "home"), "BERTH_NODE_ID": "x1"})
    assert result.returncode == 2
    assert "BERTH_TEMPORAL_ADDRESS is not set" in result.stdout
    assert "no cluster token: set BERTH_CLUSTER_TOKEN, or pass --token-file" in result.stdout
    assert "BERTH_API_URL is not set" in result.stdout
    assert not processes_with_home(tmp_path / "home")


def test_join_with_temporal_not_answering_says_so_and_starts_nothing(tmp_path):
    address = f"127.0.0.59:{free_port()}"  # nobody listens there
    result = join({
        "BERTH_HOME": str(tmp_path / "home"), "BERTH_NODE_ID": "x2", "BERTH_TEMPORAL_ADDRESS": address,
        "BERTH_CLUSTER_TOKEN": "t" * 40, "BERTH_API_URL": "http://127.0.0.59:1",
    })
    assert result.returncode == 2, result.stdout
    assert f"Temporal at {address} (BERTH_TEMPORAL_ADDRESS) does not answer" in result.stdout
    assert "cluster token" not in result.stdout  # the token was given: nothing said of it
    assert not processes_with_home(tmp_path / "home")


def test_join_with_a_missing_token_file_or_tls_file_says_which(tmp_path, cluster):
    env = {
        "BERTH_HOME": str(tmp_path / "home"), "BERTH_NODE_ID": "x3",
        "BERTH_TEMPORAL_ADDRESS": cluster.temporal_address, "BERTH_API_URL": cluster.first.api_url,
    }
    result = join(env, "--token-file", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert f"--token-file {tmp_path / 'nope'}: no such file" in result.stderr + result.stdout
    result = join({**env, "BERTH_CLUSTER_TOKEN": "t" * 40, "BERTH_TEMPORAL_TLS_CA": str(tmp_path / "ca.pem")})
    assert result.returncode == 2
    assert f"BERTH_TEMPORAL_TLS_CA={tmp_path / 'ca.pem'}: no such file" in result.stdout
    assert not processes_with_home(tmp_path / "home")


def test_a_token_that_cannot_stand_in_a_rule_is_refused(tmp_path, cluster):
    for token in ("short", "a token with spaces and enough characters", "x" * 20 + "`)||Host(`evil"):
        result = join({
            "BERTH_HOME": str(tmp_path / "home"), "BERTH_NODE_ID": "x5", "BERTH_CLUSTER_TOKEN": token,
            "BERTH_TEMPORAL_ADDRESS": cluster.temporal_address, "BERTH_API_URL": cluster.first.api_url,
        })
        assert result.returncode == 2, token
        assert "the cluster token must be at least 16 characters of letters, digits and ._~+/=-" in result.stdout
        assert token not in result.stdout


def test_a_bad_node_id_or_secret_key_is_refused(tmp_path, cluster):
    result = join({
        "BERTH_HOME": str(tmp_path / "home"), "BERTH_NODE_ID": "Bad/Id",
        "BERTH_TEMPORAL_ADDRESS": cluster.temporal_address, "BERTH_API_URL": cluster.first.api_url,
        "BERTH_CLUSTER_TOKEN": "t" * 40, "BERTH_SECRET_KEY": "abcde", "BERTH_DRAIN_TIMEOUT_S": "soon",
    })
    assert result.returncode == 2
    assert "BERTH_NODE_ID: 'Bad/Id' is not a node id" in result.stdout
    assert "BERTH_SECRET_KEY is too short (5 characters)" in result.stdout and "abcde" not in result.stdout
    assert "BERTH_DRAIN_TIMEOUT_S='soon' is not a number of seconds" in result.stdout


def test_every_node_is_ready_with_its_capacity_in_berth_nodes(cluster):
    nodes = wait_for_nodes(cluster, {"n1": "READY", "n2": "READY", "n3": "READY"})
    assert sorted(nodes) == ["n1", "n2", "n3"]
    for node_id, address in zip(cluster.node_ids, cluster.addresses):
        node = nodes[node_id]
        assert node["address"] == cluster.gateway_url(node_id) == f"http://{address}:{cluster.settings(node_id).gateway_port}"
        assert node["capacity_bytes"] == 2**30  # BERTH_MEMORY_LIMIT
        assert node["ram_bytes"] > 0 and node["reserved_bytes"] == 0 and node["instances"] == []
        assert "llamacpp" in node["engines"]
    result = berth(cluster, "nodes")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "STATUS", "RAM", "GPUS", "CAPACITY", "RESERVED", "INSTANCES"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == ["n1", "n2", "n3"]
    assert all(row[2] == "READY" and "1.0 GiB" in " ".join(row) and row[-1] == "0" for row in rows.values()), lines


def test_drain_and_undrain_from_the_cli(cluster):
    result = berth(cluster, "drain", "n3", "--wait", "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "n3: DRAINING" in result.stdout and "n3: drained, no instance left" in result.stdout
    assert wait_for_nodes(cluster, {"n3": "DRAINING"})["n3"]["reason"]
    result = berth(cluster, "undrain", "n3")
    assert result.returncode == 0 and "n3: READY" in result.stdout
    wait_for_nodes(cluster, {"n3": "READY"})
    result = berth(cluster, "drain", "n9")
    assert result.returncode == 1
    assert "no node 'n9' in the cluster; the nodes: n1, n2, n3" in result.stderr


def test_a_joined_node_runs_worker_and_gateway_and_sigterm_leaves_nothing(cluster):
    node = cluster.joined["n2"]
    commands = [" ".join(process.cmdline()) for process in node.processes()]
    assert any("berth.worker.main" in command for command in commands), commands
    assert any("traefik" in command for command in commands), commands
    output = "".join(node.output)
    assert "task queues berth and berth-node-n2" in output
    assert "  secret    the key that opens deployments' env values" in output  # the harness gave it a copy
    assert cluster.cluster_token() not in output  # the file is named, never its content
    token_file = node.home / "cluster-token"
    assert token_file.read_text().strip() == cluster.cluster_token()
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    # the token stays out of the environment of the node's processes (the engines inherit theirs)
    assert all("BERTH_CLUSTER_TOKEN" not in process.environ() for process in node.processes())

    assert cluster.stop_node("n2") == 0
    output = "".join(node.output)
    assert "berth: leaving the cluster" in output
    assert "berth: n2 is drained: no instance left here" in output
    assert "berth: stopped" in output
    assert not node.processes()
    # DOWN at once: its worker's presence activity says that it stops (berth.node.presence)
    assert "worker stopped" in wait_for_nodes(cluster, {"n2": "DOWN"})["n2"]["reason"]
    cluster.restart_node("n2")  # the same home and ports: it comes back, READY again
    assert node.running()
    wait_for_nodes(cluster, {"n2": "READY"})


def test_berth_up_makes_the_cluster_token_and_prints_how_to_join_without_it(cluster):
    output = "".join(cluster.first.output)
    line = cluster.first.wait_for_output("berth join")
    assert f"BERTH_TEMPORAL_ADDRESS={cluster.temporal_address}" in line
    assert str(cluster.token_path) in line
    assert cluster.cluster_token() not in output
    assert oct(cluster.token_path.stat().st_mode & 0o777) == "0o600"


def test_a_tls_client_against_the_dev_server_fails_with_what_was_tried(tmp_path, cluster):
    """The dev server has no TLS: a node asking for it is refused at start, saying what it tried."""
    result = join({
        "BERTH_HOME": str(tmp_path / "home"), "BERTH_NODE_ID": "x4", "BERTH_TEMPORAL_TLS": "1",
        "BERTH_TEMPORAL_ADDRESS": cluster.temporal_address, "BERTH_API_URL": cluster.first.api_url,
        "BERTH_CLUSTER_TOKEN": "t" * 40,
        **{name: str(free_port()) for name in ("BERTH_GATEWAY_PORT", "BERTH_GATEWAY_METRICS_PORT",
                                               "BERTH_WORKER_METRICS_PORT", "BERTH_FILES_PORT")},
    })
    assert result.returncode == 1, result.stdout
    assert f"cannot connect to Temporal at {cluster.temporal_address} (namespace default, TLS)" in result.stdout
    assert not processes_with_home(tmp_path / "home")


def test_berth_up_refuses_tls_options_for_its_own_dev_server(tmp_path):
    base = {key: value for key, value in os.environ.items() if not key.startswith("BERTH_")}
    result = subprocess.run(
        [sys.executable, "-m", "berth.api.cli", "up"],
        env={**base, "BERTH_HOME": str(tmp_path / "home"), "BERTH_TEMPORAL_API_KEY": "k",
             **{name: str(free_port()) for name in ("BERTH_TEMPORAL_PORT", "BERTH_UI_PORT", "BERTH_GATEWAY_PORT",
                                                    "BERTH_API_PORT", "BERTH_WORKER_METRICS_PORT",
                                                    "BERTH_TEMPORAL_METRICS_PORT", "BERTH_GATEWAY_METRICS_PORT")}},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "BERTH_TEMPORAL_API_KEY: `berth up` runs its own Temporal dev server, which has no TLS" in result.stdout
    assert not processes_with_home(tmp_path / "home")


def gateway_binds_the_node_address(cluster) -> bool:
    settings = cluster.settings("n2")
    return static_config(settings)["entryPoints"]["web"]["address"].startswith(settings.node_address)


async def test_sigterm_of_berth_join_moves_its_instance_to_another_node_before_it_stops(cluster, tiny_gguf):
    if not gateway_binds_the_node_address(cluster):  # readiness probes the route at the node's address
        pytest.skip("needs the gateway bound on BERTH_NODE_ADDRESS (branch mesh)")
    from berth.domain.spec import DeploymentSpec
    from berth.testing.harness import deployment_state, start_deployment

    client = await cluster.client()
    wait_for_nodes(cluster, {"n2": "READY", "n3": "READY"})
    name = "join-drained"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=1024,
                                                  nodes=["n2", "n3"], public=True))
    deadline = time.monotonic() + 120
    while (state := await deployment_state(client, name)).ready_replicas != 1:
        assert time.monotonic() < deadline and state.status.value not in ("FAILED", "STOPPED"), state
        await asyncio.sleep(0.2)
    source = state.instances[0].node
    target = ({"n2", "n3"} - {source}).pop()
    node = cluster.joined[source]
    started = time.monotonic()
    assert cluster.stop_node(source) == 0
    took = time.monotonic() - started
    output = "".join(node.output)
    assert f"berth: draining {source}" in output and f"berth: {source} is drained: no instance left here" in output, output
    assert not node.processes()  # worker, gateway and the old engine: all gone
    state = await deployment_state(client, name)
    assert [instance.node for instance in state.instances] == [target] and state.ready_replicas == 1, state
    print(f"SIGTERM of berth join on {source} -> instance serving on {target}, join exited: {took:.1f} s")
    await client.get_workflow_handle(f"deployment-{name}").signal("stop")
    cluster.restart_node(source)
    wait_for_nodes(cluster, {source: "READY"})


async def test_a_drain_that_cannot_end_stops_at_the_timeout_and_says_what_it_left(cluster, tiny_gguf):
    """An instance pinned to the node cannot move: `berth join` waits BERTH_DRAIN_TIMEOUT_S, names it, stops.
    (It must serve: an instance that does not is retired at once by the drain.)"""
    if not gateway_binds_the_node_address(cluster):  # readiness probes the route at the node's address
        pytest.skip("needs the gateway bound on BERTH_NODE_ADDRESS (branch mesh)")
    from berth.domain.spec import DeploymentSpec
    from berth.testing.harness import deployment_state, start_deployment

    node = cluster.joined["n3"]
    assert cluster.stop_node("n3") == 0
    node.env["BERTH_DRAIN_TIMEOUT_S"] = "2"
    cluster.restart_node("n3")
    client = await cluster.client()
    name = "join-pinned"
    await start_deployment(client, DeploymentSpec(name=name, model=str(tiny_gguf), context_size=1024, node="n3",
                                                  public=True))
    deadline = time.monotonic() + 120
    while (state := await deployment_state(client, name)).ready_replicas != 1:
        assert time.monotonic() < deadline and state.status.value not in ("FAILED", "STOPPED"), state
        await asyncio.sleep(0.2)
    held = [instance.instance_id for instance in state.instances]
    try:
        assert cluster.stop_node("n3") == 0
        output = "".join(node.output)
        assert "berth: the drain did not end within 2 s (BERTH_DRAIN_TIMEOUT_S)" in output, output
        assert held[0] in output
        assert not node.processes()  # its engine too, although it never moved
    finally:
        await client.get_workflow_handle(f"deployment-{name}").signal("stop")
        node.env.pop("BERTH_DRAIN_TIMEOUT_S")
        cluster.restart_node("n3")
        wait_for_nodes(cluster, {"n3": "READY"})


def test_kill_node_leaves_nothing_of_a_joined_node_and_it_comes_back(cluster):
    node = cluster.joined["n3"]
    pids = cluster.kill_node("n3")
    assert node.process.pid in pids and len(pids) >= 3  # berth join, worker, gateway (and engines)
    assert not node.processes() and not node.running()
    cluster.restart_node("n3")
    wait_for_nodes(cluster, {"n3": "READY"})


def test_freeze_and_thaw_the_first_node_keeps_the_clusters_temporal_and_api(cluster):
    pids = cluster.freeze_node("n1")
    try:
        commands = [" ".join(p.cmdline()) for p in cluster.node_processes("n1")]
        assert not any("server start-dev" in c or "berth.api.server" in c for c in commands)
        with cluster.api() as api:  # the API and Temporal are the cluster's: they still answer
            assert api.get("/healthz").status_code == 200
        assert all(psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in pids)
    finally:
        cluster.thaw_node("n1")
    assert all(psutil.Process(pid).status() != psutil.STATUS_STOPPED for pid in pids)


def test_a_token_given_in_the_environment_stays_out_of_the_nodes_processes(cluster):
    cluster.token_file = False  # BERTH_CLUSTER_TOKEN for this node
    try:
        node = cluster.add_node("n4", "127.0.0.54")
    finally:
        cluster.token_file = True
    assert node.env["BERTH_CLUSTER_TOKEN"] == cluster.cluster_token()
    assert (node.home / "cluster-token").read_text().strip() == cluster.cluster_token()
    # what `berth join` starts (worker, gateway, their children) inherits no token; `berth join`
    # itself was started with it (its /proc environ keeps what it was started with)
    environments = [process.environ() for process in node.processes() if process.pid != node.process.pid]
    assert len(environments) >= 2 and all("BERTH_CLUSTER_TOKEN" not in env for env in environments)
    wait_for_nodes(cluster, {"n4": "READY"})
    assert cluster.stop_node("n4") == 0 and not node.processes()


def test_berth_join_restarts_a_worker_that_dies_and_the_node_stays(cluster):
    node = cluster.joined["n2"]
    worker = next(p for p in node.processes() if "berth.worker.main" in " ".join(p.cmdline()))
    worker.kill()
    node.wait_for_output("berth: worker exited with status -9; restarting it", timeout_s=10)
    deadline = time.monotonic() + 30
    while not any("berth.worker.main" in " ".join(p.cmdline()) and p.pid != worker.pid for p in node.processes()):
        assert time.monotonic() < deadline, "no new worker"
        time.sleep(0.1)
    assert node.running()
    wait_for_nodes(cluster, {"n2": "READY"})
