"""`NODE:/path` end to end on a cluster of two nodes (berth.testing.cluster_harness: `berth up` is
node fa, `berth join` node fb): a deployment pinned to fb of a model on fa is copied from fa's
gateway into fb's cache (COPYING_FILES progress in the deployment's history), verified, and serves;
a second deployment of it on fb copies nothing; fb's worker killed mid-copy resumes with a range."""

import hashlib
import os
import re
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from berth.domain.model_reference import parse_model_reference
from berth.domain.temporal_names import DOWNLOAD_PROGRESS_SIGNAL, workflow_id
from berth.node.file_copy import copy_entry, part_path
from berth.settings import Settings
from berth.testing.cluster_harness import Cluster
from berth.testing.harness import wait_for_api_status
from berth.testing.tiny_gguf import write_tiny_gguf
from berth.worker.gateway import static_config

ADDRESSES = ["127.0.0.43", "127.0.0.44"]
PADDING = 192 << 20  # bytes after the tiny model's own: a copy long enough to kill the worker in


def node_addresses() -> list[str]:
    """The nodes' own loopback addresses once the gateway binds on BERTH_NODE_ADDRESS (the mesh
    piece); before, both on 127.0.0.1 (their gateways on their own ports), where peers reach them."""
    settings = Settings.from_env({"BERTH_NODE_ADDRESS": ADDRESSES[0], "BERTH_HOME": "/nonexistent"})
    bound = static_config(settings)["entryPoints"]["web"]["address"]
    return ADDRESSES if bound.startswith(ADDRESSES[0] + ":") else ["127.0.0.1", "127.0.0.1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = Cluster(tmp_path_factory.mktemp("files-cluster"), node_addresses(), node_ids=["fa", "fb"],
                      share_api_token=True)
    try:
        running.start()
        yield running
    finally:
        leftovers = running.close()
        assert not leftovers, leftovers


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("fa-models") / "tiny.gguf")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_gets(cluster: Cluster, path: Path) -> list[str]:
    """The file server's log lines on fa for GETs of `path` (berth.node.file_server)."""
    log = (cluster.settings("fa").logs_dir / "worker.log").read_text(errors="replace")
    return [line for line in log.splitlines() if f"files: GET {str(path)!r} " in line]


def deploy(api, name: str, model: str, node: str = "fb") -> dict:
    accepted = api.post("/v1/deployments", json={"name": name, "model": model, "node": node})
    assert accepted.status_code == 202, accepted.text
    return accepted.json()


def stop(api, name: str) -> None:
    api.post(f"/v1/deployments/{name}/stop")
    wait_for_api_status(api, name, {"STOPPED"}, timeout_s=60)


async def progress_signals(cluster: Cluster, name: str) -> list[dict]:
    client = await cluster.client()
    signals = []
    async for event in client.get_workflow_handle(workflow_id(name)).fetch_history_events():
        attributes = event.workflow_execution_signaled_event_attributes
        if event.HasField("workflow_execution_signaled_event_attributes") and attributes.signal_name == DOWNLOAD_PROGRESS_SIGNAL:
            signals.append(attributes.input.payloads[0].data.decode())
    return signals


async def test_a_node_path_deployed_on_another_node_is_copied_and_serves(cluster, model):
    reference = f"fa:{model}"
    fb_models = cluster.settings("fb").models_dir
    with cluster.api() as api:
        deploy(api, "copied-a", reference)
        state = wait_for_api_status(api, "copied-a", {"DEPLOYED", "FAILED"}, timeout_s=120)
        assert state["status"] == "DEPLOYED", state["error"]
        assert state["instances"][0]["node"] == "fb"
        copy = copy_entry(parse_model_reference(reference), fb_models)
        assert copy.exists() and sha256(copy) == sha256(model), "the copy, whole, in fb's cache"
        signals = await progress_signals(cluster, "copied-a")
        assert signals and all(reference in s for s in signals), "COPYING_FILES progress reached the deployment"
        assert len(served_gets(cluster, model)) == 1
        # a second deployment on fb: the copy is used, fa is asked nothing
        deploy(api, "copied-b", reference)
        state = wait_for_api_status(api, "copied-b", {"DEPLOYED", "FAILED"}, timeout_s=120)
        assert state["status"] == "DEPLOYED", state["error"]
        assert len(served_gets(cluster, model)) == 1, "nothing copied again"
        assert not await progress_signals(cluster, "copied-b")
        for name in ("copied-a", "copied-b"):
            stop(api, name)


def fb_worker(cluster: Cluster) -> psutil.Process:
    for process in cluster.node_processes("fb"):
        if "berth.worker.main" in " ".join(process.cmdline()):
            return process
    raise AssertionError("fb has no worker")


async def test_the_worker_killed_mid_copy_resumes_with_a_range(cluster, model, tmp_path_factory):
    big = tmp_path_factory.mktemp("fa-big") / "padded.gguf"
    shutil.copyfile(model, big)
    with open(big, "ab") as handle:  # bytes after the model's own: what llama.cpp never reads
        handle.truncate(big.stat().st_size + PADDING)
    reference = f"fa:{big}"
    copy = copy_entry(parse_model_reference(reference), cluster.settings("fb").models_dir)
    part = part_path(copy)
    with cluster.api() as api:
        deploy(api, "copied-big", reference)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (part.exists() and 0 < part.stat().st_size < big.stat().st_size):
            time.sleep(0.005)
        have = part.stat().st_size
        worker = fb_worker(cluster)
        os.kill(worker.pid, signal.SIGKILL)  # mid-copy
        assert have < big.stat().st_size
        state = wait_for_api_status(api, "copied-big", {"DEPLOYED", "FAILED"}, timeout_s=180)
        assert copy.exists() and sha256(copy) == sha256(big), state
        gets = served_gets(cluster, big)
        assert len(gets) == 2 and " 200 " in gets[0], gets
        resumed = re.search(r" 206 \((\d+) bytes from (\d+)\)", gets[1])
        assert resumed, gets
        offset, length = int(resumed.group(2)), int(resumed.group(1))
        assert offset >= have and offset + length == big.stat().st_size, "only the rest the second time"
        print(f"killed at {have} bytes, resumed from {offset} of {big.stat().st_size}")
        assert state["status"] == "DEPLOYED", state["error"]
        stop(api, "copied-big")


def test_a_plain_path_is_qualified_with_the_apis_node_in_a_cluster(cluster, model):
    """Two nodes: the API (beside fa, BERTH_API_NODE=fa) sends a plain path as fa's; on fa itself
    it is used in place. A spec pinned to fb keeps its plain path (a file on fb)."""
    with cluster.api() as api:
        accepted = deploy(api, "plain-on-fa", str(model), node="fa")
        assert accepted["spec"]["model"] == f"fa:{model}"
        state = wait_for_api_status(api, "plain-on-fa", {"DEPLOYED", "FAILED"}, timeout_s=120)
        assert state["status"] == "DEPLOYED", state["error"]
        assert state["instances"][0]["node"] == "fa"
        stop(api, "plain-on-fa")
        pinned = deploy(api, "plain-on-fb", str(model), node="fb")
        assert pinned["spec"]["model"] == str(model)
        stop(api, "plain-on-fb")
