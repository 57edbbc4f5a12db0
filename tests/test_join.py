"""`berth join` against real servers: what it refuses before starting anything, and a joined node
that stops on SIGTERM (drain, then worker, engines, gateway) leaving no process. Addresses
127.0.0.51-59 (docs/cluster.md: each suite its own)."""

import os
import subprocess
import sys
import time

import pytest

from berth.testing.cluster_harness import Cluster
from berth.testing.harness import free_port, processes_with_home


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


def test_a_bad_node_id_is_refused(tmp_path, cluster):
    result = join({
        "BERTH_HOME": str(tmp_path / "home"), "BERTH_NODE_ID": "Bad/Id",
        "BERTH_TEMPORAL_ADDRESS": cluster.temporal_address, "BERTH_API_URL": cluster.first.api_url,
        "BERTH_CLUSTER_TOKEN": "t" * 40,
    })
    assert result.returncode == 2
    assert "BERTH_NODE_ID: 'Bad/Id' is not a node id" in result.stdout


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
    assert cluster.cluster_token() not in output  # the file is named, never its content
    token_file = node.home / "cluster-token"
    assert token_file.read_text().strip() == cluster.cluster_token()
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    # the token stays out of the environment of the node's processes (the engines inherit it)
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
