"""Models from URLs and the Hugging Face hub, end to end: a real stack fetching from a local server.

One fake hub (berth.testing.fake_hf_hub, a real HTTP server) serves both: a URL model is a
`.../resolve/main/FILE` address on it, and the stack's worker has HF_ENDPOINT pointed at it.
"""

import asyncio
import hashlib
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest

from berth.domain.errors import ErrorCode
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus as S, InstanceStatus
from berth.domain.temporal_names import workflow_id
from berth.models.presets import QWEN25_05B_INSTRUCT
from berth.testing.fake_hf_hub import FakeHub
from berth.testing.harness import (
    RunningStack,
    deployment_state,
    engine_processes,
    start_deployment,
    wait_for_status,
)
from berth.testing.tiny_gguf import write_tiny_gguf
from tests.test_cli import berth

QWEN_REPO, QWEN_FILE = QWEN25_05B_INSTRUCT.reference.removeprefix("hf:").split(":")
SLOW_BYTES_PER_S = 400_000  # the tiny GGUF (~1.7 MB) takes ~4 s: long enough to watch and interrupt


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("src") / "tiny.gguf").read_bytes()


@pytest.fixture(scope="module")
def hub(tiny_bytes):
    noise = random.Random(7)
    repos = {
        # a URL model's home, served slowly for the tests that interrupt it
        "files/models": {
            "tiny.gguf": tiny_bytes, "slow.gguf": tiny_bytes, "resume.gguf": tiny_bytes, "stop.gguf": tiny_bytes,
        },
        # a hub repo with several quantisations: only the Q4_K_M one is a model that loads
        "org/tiny-GGUF": {
            "tiny-Q4_K_M.gguf": tiny_bytes,
            "tiny-Q8_0.gguf": noise.randbytes(300_000),
            "tiny-F16.gguf": noise.randbytes(500_000),
            "README.md": b"# tiny\n",
        },
        "org/deleted-GGUF": {"tiny-Q4_K_M.gguf": tiny_bytes},
        "org/slow-GGUF": {"tiny-Q4_K_M.gguf": tiny_bytes},
        # what the hub preset names (the file stands in for the real 0.5 GB one)
        QWEN_REPO: {QWEN_FILE: tiny_bytes, "qwen2.5-0.5b-instruct-q8_0.gguf": noise.randbytes(1000)},
    }
    with FakeHub(repos) as server:
        server.throttle("files/models", "slow.gguf", SLOW_BYTES_PER_S)
        server.throttle("files/models", "resume.gguf", SLOW_BYTES_PER_S)
        server.throttle("files/models", "stop.gguf", SLOW_BYTES_PER_S / 2)
        server.throttle("org/slow-GGUF", "tiny-Q4_K_M.gguf", SLOW_BYTES_PER_S)
        yield server


@pytest.fixture(scope="module")
def sources_stack(tmp_path_factory, hub):
    home = tmp_path_factory.mktemp("berth-sources")
    running = RunningStack(home, extra_env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}).start()
    yield running
    code, leftovers = running.stop_and_reap()
    assert code == 0, "berth up did not exit cleanly:\n" + "".join(running.output)
    assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture(scope="module")
async def client(sources_stack):
    return await sources_stack.client()


def url_of(hub, file: str, sha256: str | None = None) -> str:
    url = f"{hub.url}/files/models/resolve/main/{file}"
    return f"{url}#sha256={sha256}" if sha256 else url


def range_requests(hub, file: str) -> list[str]:
    return [r.range for r in hub.requests if r.method == "GET" and r.path.endswith(f"/{file}") and r.range]


async def released(client, name: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while (await deployment_state(client, name)).port is not None:
        assert time.monotonic() < deadline, f"{name} kept its port"
        await asyncio.sleep(0.05)


async def watch_download(client, name: str, until: float, timeout_s: float = 30):
    """Poll `state` until the download has passed `until` (a fraction); every progress seen."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = await deployment_state(client, name)
        if state.download is not None:
            seen.append(state.download)
            if state.download.bytes_total and state.download.bytes_done >= until * state.download.bytes_total:
                return state, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}: the download never passed {until:.0%}; seen {seen[-3:]}")


async def test_a_url_model_downloads_with_progress_and_serves(client, hub, sources_stack, tiny_bytes, name):
    sha = hashlib.sha256(tiny_bytes).hexdigest()
    await start_deployment(client, DeploymentSpec(name=name, model=url_of(hub, "slow.gguf", sha)))
    state, seen = await watch_download(client, name, until=0.3)
    assert state.instances[0].status is InstanceStatus.COPYING_FILES
    assert state.download.bytes_total == len(tiny_bytes) and state.download.file == "slow.gguf"
    assert 0 < state.download.percent < 100
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED, S.ERROR})
    assert state.status is S.DEPLOYED, state.error
    assert state.download is None  # progress is only there while fetching
    model = Path(state.model_path)
    assert model.is_relative_to(sources_stack.home / "models" / "url") and model.read_bytes() == tiny_bytes
    assert sources_stack.chat(name).status_code == 200


async def test_a_wrong_sha256_fails_naming_both_hashes(client, hub, tiny_bytes, name):
    wrong = "0" * 64
    await start_deployment(client, DeploymentSpec(name=name, model=url_of(hub, "tiny.gguf", wrong)))
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED})
    assert state.status is S.FAILED and state.error.code is ErrorCode.MODEL_LOADING_FAILURE
    assert wrong in state.error.message and hashlib.sha256(tiny_bytes).hexdigest() in state.error.message
    await released(client, name)  # FAILED releases its port and route (just after saying FAILED)


async def test_a_download_resumes_after_the_worker_is_killed(client, hub, sources_stack, tiny_bytes, name):
    await start_deployment(client, DeploymentSpec(name=name, model=url_of(hub, "resume.gguf")))
    state, _ = await watch_download(client, name, until=0.4)
    os.kill(sources_stack.worker_pid(), signal.SIGKILL)  # `berth up` starts another worker
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED}, timeout_s=90)
    assert state.status is S.DEPLOYED, state.error
    ranges = range_requests(hub, "resume.gguf")
    assert ranges, "the second worker did not resume with a Range request"
    start = int(ranges[-1].removeprefix("bytes=").split("-")[0])
    assert start >= 0.3 * len(tiny_bytes)
    assert Path(state.model_path).read_bytes() == tiny_bytes  # resumed, and whole


async def test_stop_while_downloading_keeps_the_partial_file_and_the_next_deploy_resumes(
    client, hub, sources_stack, tiny_bytes, name
):
    url = url_of(hub, "stop.gguf")
    await start_deployment(client, DeploymentSpec(name=name, model=url))
    await watch_download(client, name, until=0.2)
    handle = client.get_workflow_handle(workflow_id(name))
    stopped_at = time.monotonic()
    await handle.signal("stop")
    await handle.result()
    took = time.monotonic() - stopped_at
    assert took < 6, f"STOPPED took {took:.1f} s"
    partials = list((sources_stack.home / "models" / "url").rglob("*.partial"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size < len(tiny_bytes)
    kept = partials[0].stat().st_size

    again = f"{name}-again"
    await start_deployment(client, DeploymentSpec(name=again, model=url))
    state = await wait_for_status(client, again, {S.DEPLOYED, S.FAILED}, timeout_s=60)
    assert state.status is S.DEPLOYED, state.error
    assert any(r.startswith(f"bytes={kept}-") for r in range_requests(hub, "stop.gguf"))
    assert Path(state.model_path).read_bytes() == tiny_bytes


async def test_a_hub_repo_gets_only_the_chosen_gguf(client, hub, sources_stack, name):
    await start_deployment(client, DeploymentSpec(name=name, model="hf:org/tiny-GGUF"))
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED, S.ERROR}, timeout_s=60)
    assert state.status is S.DEPLOYED, state.error
    assert Path(state.model_path).name == "tiny-Q4_K_M.gguf"
    assert "Q4_K_M" in state.model_choice
    cached = sorted(p.name for p in (sources_stack.home / "models" / "hub").rglob("*") if p.is_file())
    repo_files = [n for n in cached if n.endswith(".gguf") or n == "README.md"]
    assert repo_files == ["tiny-Q4_K_M.gguf"], cached
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert "tiny-Q8_0.gguf" not in fetched and "tiny-F16.gguf" not in fetched


async def test_deleted_weights_mean_must_redownload_and_retry_fetches_them(client, hub, sources_stack, name):
    await start_deployment(client, DeploymentSpec(name=name, model="hf:org/deleted-GGUF"))
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED, S.ERROR}, timeout_s=60)
    assert state.status is S.DEPLOYED, state.error
    model = Path(state.model_path)
    model.unlink()  # the user deletes the file berth downloaded, while it is served
    for process in engine_processes(sources_stack.home, name):
        process.kill()  # and the engine restarts
    state = await wait_for_status(client, name, {S.MUST_REDOWNLOAD, S.FAILED}, timeout_s=60)
    assert state.status is S.MUST_REDOWNLOAD and state.error.code is ErrorCode.MUST_REDOWNLOAD
    assert str(model) in state.error.message and "retry" in state.error.guidance
    await released(client, name)
    assert not engine_processes(sources_stack.home, name)

    await client.get_workflow_handle(workflow_id(name)).signal("retry")
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED}, timeout_s=60)
    assert state.status is S.DEPLOYED, state.error
    assert model.exists() and sources_stack.chat(name).status_code == 200


async def test_a_hub_preset_is_fetched_from_the_hub(client, hub, sources_stack, name):
    await start_deployment(client, DeploymentSpec(name=name, model=QWEN25_05B_INSTRUCT.name))
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED, S.ERROR}, timeout_s=60)
    assert state.status is S.DEPLOYED, state.error
    assert Path(state.model_path).name == QWEN_FILE
    assert hub.downloads(QWEN_REPO) == [QWEN_FILE]


def download_children() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if "berth.models.hub_fetch" in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


async def test_a_hub_download_dies_with_its_worker_and_resumes(client, hub, sources_stack, tiny_bytes, name):
    await start_deployment(client, DeploymentSpec(name=name, model="hf:org/slow-GGUF"))
    await watch_download(client, name, until=0.3)
    assert download_children(), "the hub download runs in a child process"
    os.kill(sources_stack.worker_pid(), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while download_children():  # no orphan left writing into the cache
        assert time.monotonic() < deadline, "the download outlived its worker"
        await asyncio.sleep(0.05)
    state = await wait_for_status(client, name, {S.DEPLOYED, S.FAILED}, timeout_s=90)
    assert state.status is S.DEPLOYED, state.error
    resumed = [r.range for r in hub.requests if r.method == "GET" and r.range and "slow-GGUF" in r.path]
    assert resumed and int(resumed[-1].removeprefix("bytes=").split("-")[0]) > 0
    assert Path(state.model_path).read_bytes() == tiny_bytes


def test_deploy_wait_shows_the_download_progress(hub, sources_stack):
    result = berth(sources_stack, "deploy", url_of(hub, "slow.gguf") + "?cli=1", "--name", "cli-progress", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    progress = [line for line in result.stdout.splitlines() if "downloading" in line]
    assert len(progress) >= 2, result.stdout  # printed once per tenth when not on a terminal
    assert "%" in progress[0] and "slow.gguf" in progress[0] and "MB" in progress[0]
    assert "cli-progress is DEPLOYED" in result.stdout
    berth(sources_stack, "stop", "cli-progress", "--wait")


def test_no_download_process_outlives_the_tests(sources_stack):
    assert not download_children()
