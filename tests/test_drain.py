"""Draining an instance before its engine stops (berth.node.drain), against a real llama.cpp engine:
the drain ends when the engine's own count of requests in flight is 0, not after a fixed time, and
a drain timeout cuts it short, saying how many requests it leaves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest

from berth.domain.pipeline import DrainRequest
from berth.engines.base import in_flight_from_metrics
from berth.engines.registry import get_engine
from berth.node import drain as drain_module
from berth.node.drain import ROUTE_SETTLE_S, drain_engine
from berth.node.engine_records import EngineRecord, EngineRecords
from berth.node.probe_client import probe_client
from berth.settings import Settings
from berth.testing.harness import free_port
from berth.testing.tiny_gguf import write_tiny_gguf

LLAMA = ("llamacpp:requests_processing", "llamacpp:requests_deferred")
# One slot, so requests queue (deferred) behind each other: 2038 tokens each, ~0.7-0.9 s apiece here.
LONG_REQUEST = {"prompt": "hello there", "n_predict": 4000, "ignore_eos": True}
QUEUED = 4


def test_in_flight_sums_the_series_over_their_labels_and_ignores_the_rest():
    text = (
        "# HELP llamacpp:requests_processing Number of requests processing\n"
        "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\nllamacpp:n_decode_total 50\n"
    )
    assert in_flight_from_metrics(text, LLAMA) == 3
    vllm = (
        'vllm:num_requests_running{model_name="org/m",engine="0"} 3.0\n'
        'vllm:num_requests_waiting{model_name="org/m",engine="0"} 1.0\n'
        "vllm:num_requests_waiting_by_reason 9.0\n"
    )
    assert in_flight_from_metrics(vllm, get_engine("vllm").in_flight_series) == 4
    assert in_flight_from_metrics("other_series 4\n", LLAMA) is None
    assert get_engine("mlx").in_flight_series == ()  # MLX cannot say: its drain is a fixed wait


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A llama.cpp server (xllamacpp) on the tiny GGUF, with one slot and its metrics on."""
    folder = tmp_path_factory.mktemp("drain")
    model = write_tiny_gguf(folder / "tiny.gguf")
    port = free_port()
    argv = [
        sys.executable, "-m", "berth.engines.xllamacpp_server", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--ctx-size", "4096", "--parallel", "1", "--threads", "1", "--metrics",
    ]  # fmt: skip
    with open(folder / "engine.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (folder / "engine.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the engine did not become ready"
            time.sleep(0.1)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTH_HOME", str(tmp_path / "home"))
    settings = Settings.from_env()
    settings.ensure_dirs()
    return settings


def _record(settings: Settings, port: int, instance_id: str = "d-1") -> None:
    EngineRecords(settings.run_dir).put(EngineRecord(
        instance_id=instance_id, deployment="d", engine="llamacpp", port=port, pid=1, pid_create_time=0.0,
        wrapper_pid=0, log_path="", log_offset=0, exit_file="", started_at=time.time(),
    ))


async def _requests_in_flight(port: int) -> tuple[list[asyncio.Task], list[float]]:
    """QUEUED long requests sent at once; returns their tasks and, as each ends, its end time."""
    ended: list[float] = []

    async def one(client: httpx.AsyncClient) -> int:
        response = await client.post(f"http://127.0.0.1:{port}/completion", json=LONG_REQUEST)
        ended.append(time.monotonic())
        return response.json()["tokens_predicted"]

    client = httpx.AsyncClient(timeout=60)
    tasks = [asyncio.create_task(one(client)) for _ in range(QUEUED)]
    # until the engine has them all (one processing, the rest deferred)
    deadline = time.monotonic() + 10
    while await get_engine("llamacpp").in_flight(probe_client(), f"http://127.0.0.1:{port}") != QUEUED:
        assert time.monotonic() < deadline, "the requests never reached the engine together"
        await asyncio.sleep(0.02)
    tasks.append(asyncio.create_task(_close_after(client, list(tasks))))
    return tasks, ended


async def _close_after(client: httpx.AsyncClient, tasks: list[asyncio.Task]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()


async def test_a_drain_waits_until_the_last_request_in_flight_is_answered(engine, settings):
    _record(settings, engine)
    tasks, ended = await _requests_in_flight(engine)
    heartbeats: list[float] = []
    outcome = await drain_engine(
        DrainRequest(instance_id="d-1", timeout_s=60), settings, heartbeat=lambda: heartbeats.append(time.monotonic())
    )
    returned = time.monotonic()
    answers = await asyncio.gather(*tasks[:QUEUED])
    assert answers == [2038] * QUEUED  # every request answered whole
    assert outcome.idle and outcome.in_flight == 0, outcome
    assert "no request in flight" in outcome.detail
    assert len(ended) == QUEUED and max(ended) <= returned  # not before the last answer
    assert outcome.waited_s > 1.5, outcome  # the queue took seconds: longer than the fixed 1 s of before
    assert len(heartbeats) >= 5  # it heartbeats while it waits (a stop reaches it)


async def test_a_drain_timeout_ends_the_wait_and_says_how_many_requests_it_leaves(engine, settings):
    _record(settings, engine)
    tasks, _ended = await _requests_in_flight(engine)
    outcome = await drain_engine(DrainRequest(instance_id="d-1", timeout_s=0), settings, heartbeat=lambda: None)
    assert not outcome.idle and outcome.in_flight and outcome.in_flight >= 1, outcome
    assert "still in flight after the drain timeout (0 s): cut by the stop" in outcome.detail
    assert ROUTE_SETTLE_S <= outcome.waited_s < ROUTE_SETTLE_S + 1.0, outcome
    await asyncio.gather(*tasks)


async def test_an_engine_that_is_gone_or_unknown_has_nothing_in_flight(settings, monkeypatch):
    monkeypatch.setattr(drain_module, "ROUTE_SETTLE_S", 0.0)
    _record(settings, free_port(), "gone-1")  # nothing listens there
    outcome = await drain_engine(DrainRequest(instance_id="gone-1", timeout_s=30), settings, heartbeat=lambda: None)
    assert outcome.idle and "no longer answers" in outcome.detail and outcome.waited_s < 1, outcome
    outcome = await drain_engine(DrainRequest(instance_id="never-1", timeout_s=30), settings, heartbeat=lambda: None)
    assert outcome.idle and outcome.detail == "no engine of this instance on the node"
