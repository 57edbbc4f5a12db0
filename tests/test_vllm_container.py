"""vLLM in Docker: the exact container request the Docker SDK sends, asserted against a fake Docker
Engine API (a real HTTP server; the SDK itself is real), idempotent launches found by label, exit
facts classified, and readiness/supervision against a stub that answers like vLLM's /health."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from berth.node import container_runtime, supervision
from berth.node.engine_records import EngineRecords
from berth.node.engine_watch import EngineView
from berth.node.engine_launch import launch, stop_all_for_node_shutdown, stop_instance
from berth.activities.readiness import await_ready
from berth.activities.supervision import supervise
from berth.domain.diagnostics import classify_log
from berth.domain.errors import ErrorCode
from berth.domain.pipeline import LaunchRequest, ReadyRequest
from berth.engines.base import Readiness
from berth.engines.flags import EngineArgsError
from berth.engines.registry import get_engine
from berth.engines.vllm import UnsafeMount, VllmEngine, container_mounts
from berth.settings import Settings
from berth.testing.fake_docker import FakeDocker
from berth.testing.harness import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
IMAGE = "vllm/vllm-openai:v0.11.0"


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    with FakeDocker() as fake:
        monkeypatch.setenv("DOCKER_HOST", fake.url)
        monkeypatch.setenv("BERTH_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("BERTH_VLLM_IMAGE", IMAGE)
        monkeypatch.setenv("BERTH_VLLM_RUNTIME", "container")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "models" / "Qwen2.5-0.5B-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def request(model: str, port: int = 20001, **fields) -> LaunchRequest:
    return LaunchRequest(
        instance_id="qwen-1a2b3c4d", deployment="qwen", engine="vllm", model_path=model, port=port, **fields
    )


def settings() -> Settings:
    return Settings.from_env()


def created(fake: FakeDocker) -> list:
    return fake.requests_to("POST", "/containers/create")


# --- the container request ------------------------------------------------------------------


def test_the_exact_container_request(fake_docker, model_dir, tmp_path):
    handle = launch(settings(), request(str(model_dir), context_size=8192, engine_args=["--dtype", "float16"]))

    [create] = created(fake_docker)
    assert create.query == {"name": ["berth-qwen-1a2b3c4d"]}
    body = create.body
    assert body["Image"] == IMAGE
    assert body["Cmd"] == [
        "--gpu-memory-utilization", "0.9",
        "--dtype", "float16",  # the user's, checked; then berth's own, which win
        "--model", "/models/Qwen2.5-0.5B-Instruct",
        "--port", "20001",
        "--served-model-name", "qwen",
        "--max-model-len", "8192",
    ]
    host = body["HostConfig"]
    assert host["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host["PortBindings"] == {"20001/tcp": [{"HostIp": "127.0.0.1", "HostPort": "20001"}]}
    assert body["ExposedPorts"] == {"20001/tcp": {}}
    # of the host's files the model's own folder alone, read-only: not the user's HF cache (HF_HOME)
    assert host["Binds"] == [f"{model_dir}:/models/Qwen2.5-0.5B-Instruct:ro"]
    assert "Mounts" not in host and "VolumesFrom" not in host
    assert host["IpcMode"] == "host"
    assert body["Labels"] == {
        "berth.instance": "qwen-1a2b3c4d",
        "berth.deployment": "qwen",
        "berth.managed": "true",
        "berth.engine": "vllm",
        "berth.home": str(settings().home),
    }
    assert body["Env"] == ["HF_HUB_OFFLINE=1"]
    assert not (tmp_path / "hf-cache").exists()  # nothing of it is mounted, nor made

    container_id = fake_docker.containers[handle.container_id].id
    assert fake_docker.requests_to("POST", f"/containers/{container_id}/start")
    record = EngineRecords(settings().run_dir).get("qwen-1a2b3c4d")
    assert (record.runtime, record.container_id, record.pid) == ("container", container_id, handle.pid)
    assert handle.pid > 0 and handle.port == 20001


def test_gpu_ids_and_a_hub_model(fake_docker, tmp_path):
    launch(settings(), request("Qwen/Qwen2.5-0.5B-Instruct", env={"CUDA_VISIBLE_DEVICES": "0,2", "VLLM_LOGGING_LEVEL": "DEBUG"}))

    body = created(fake_docker)[0].body
    assert body["HostConfig"]["DeviceRequests"] == [
        {"Driver": "", "Count": 0, "DeviceIDs": ["0", "2"], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert body["Cmd"][2:4] == ["--model", "Qwen/Qwen2.5-0.5B-Instruct"]
    assert "--max-model-len" not in body["Cmd"]
    # vLLM fetches a hub repo id itself, into berth's own hub cache (made by berth, not by Docker as root)
    hub_cache = settings().models_dir / "hub"
    assert body["HostConfig"]["Binds"] == [f"{hub_cache}:/root/.cache/huggingface/hub:rw"]
    assert hub_cache.is_dir()
    assert body["Env"] == ["VLLM_LOGGING_LEVEL=DEBUG"]  # host GPU numbers are Docker's business


def test_one_safetensors_file_mounts_its_folder_and_a_hub_snapshot_its_repo(fake_docker, model_dir):
    hub_cache = settings().models_dir / "hub"
    snapshot = hub_cache / "models--org--tiny" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for model, bind, served in [
        (model_dir / "model.safetensors", f"{model_dir}:/models/Qwen2.5-0.5B-Instruct:ro",
         "/models/Qwen2.5-0.5B-Instruct"),
        # the snapshot's files are links to ../../blobs/<hash>: the repo's folder goes in whole
        (snapshot, f"{hub_cache / 'models--org--tiny'}:/models/models--org--tiny:ro",
         "/models/models--org--tiny/snapshots/0123abcd"),
    ]:
        launch(settings(), request(str(model)))
        body = created(fake_docker)[-1].body
        assert body["HostConfig"]["Binds"] == [bind]
        assert body["Cmd"][body["Cmd"].index("--model") + 1] == served
        stop_instance(EngineRecords(settings().run_dir), "qwen-1a2b3c4d")


@pytest.mark.parametrize("model", ["/", "/model.safetensors", "/srv/odd:name/model"])
def test_no_model_path_mounts_the_hosts_root_or_a_path_docker_misreads(fake_docker, model):
    with pytest.raises(ApplicationError) as raised:
        launch(settings(), request(model))
    assert failure_of(raised.value)["code"] == "MODEL_LOADING_FAILURE"
    assert created(fake_docker) == [], "nothing asked of Docker"


@pytest.mark.parametrize("model, is_dir, mounts, served", [
    ("/srv/models/Qwen", True, {"/srv/models/Qwen": "/models/Qwen"}, "/models/Qwen"),
    ("/srv/models/Qwen/", True, {"/srv/models/Qwen": "/models/Qwen"}, "/models/Qwen"),
    ("/srv/models/Qwen/model.safetensors", False, {"/srv/models/Qwen": "/models/Qwen"}, "/models/Qwen"),
    ("/srv/models/q.gguf", False, {"/srv/models": "/models/models"}, "/models/models/q.gguf"),
    ("/h/models/hub/models--o--r/snapshots/c1", True, {"/h/models/hub/models--o--r": "/models/models--o--r"},
     "/models/models--o--r/snapshots/c1"),
    ("/h/models/hub/models--o--r/snapshots/c1/w.safetensors", False,
     {"/h/models/hub/models--o--r": "/models/models--o--r"}, "/models/models--o--r/snapshots/c1"),
])
def test_container_mounts_one_folder_read_only(model, is_dir, mounts, served):
    volumes, inside = container_mounts(model, Path("/berth/models/hub"), is_dir=lambda _: is_dir)
    assert {host: bind["bind"] for host, bind in volumes.items()} == mounts
    assert {bind["mode"] for bind in volumes.values()} == {"ro"}
    assert inside == served


@pytest.mark.parametrize("model", ["/", "//", "/x.safetensors", "/x.gguf", "/srv/..", "/srv/a,b/m.gguf"])
def test_container_mounts_refuses_the_root_and_what_binds_cannot_hold(model):
    with pytest.raises(UnsafeMount):
        container_mounts(model, Path("/berth/models/hub"), is_dir=lambda path: path in ("/", "//"))


def test_engine_args_override_berths_defaults_never_its_own_flags():
    args = VllmEngine().server_args(request("m", engine_args=["--gpu-memory-utilization=0.5", "--seed", "3"]), "m")
    assert args == ["--gpu-memory-utilization", "0.5", "--seed", "3",
                    "--model", "m", "--port", "20001", "--served-model-name", "qwen"]
    with pytest.raises(EngineArgsError, match="--served-model-name"):
        VllmEngine().server_args(request("m", engine_args=["--served-model-name", "x"]), "m")


def test_native_vllm_is_a_plain_process(monkeypatch):
    monkeypatch.setenv("BERTH_VLLM_RUNTIME", "process")
    engine = VllmEngine()
    assert engine.runtime() == "process"
    argv = engine.command(request("/m", context_size=4096)).argv
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[3:] == ["--gpu-memory-utilization", "0.9", "--model", "/m", "--port", "20001",
                        "--served-model-name", "qwen", "--max-model-len", "4096", "--host", "127.0.0.1"]
    monkeypatch.delenv("BERTH_VLLM_RUNTIME")
    assert engine.runtime() == ("process" if _vllm_importable() else "container")


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# --- idempotency ------------------------------------------------------------------------------


def test_a_retried_launch_finds_the_container_by_label(fake_docker, model_dir):
    first = launch(settings(), request(str(model_dir)))
    # the worker died after creating the container, before recording it
    EngineRecords(settings().run_dir).remove("qwen-1a2b3c4d")

    again = launch(settings(), request(str(model_dir)))

    assert len(created(fake_docker)) == 1, "a second container was made"
    assert again.container_id == first.container_id
    listed = fake_docker.requests_to("GET", "/containers/json")
    assert json.loads(listed[-1].query["filters"][0]) == {"label": ["berth.instance=qwen-1a2b3c4d"]}
    assert EngineRecords(settings().run_dir).get("qwen-1a2b3c4d").container_id == first.container_id

    # with the record in place, the retry does not even ask Docker for a list
    lists_before = len(fake_docker.requests_to("GET", "/containers/json"))
    assert launch(settings(), request(str(model_dir))).container_id == first.container_id
    assert len(fake_docker.requests_to("GET", "/containers/json")) == lists_before


def test_a_launch_replaces_an_exited_or_different_container(fake_docker, model_dir):
    first = launch(settings(), request(str(model_dir)))
    fake_docker.exit(first.container_id, 1)
    second = launch(settings(), request(str(model_dir)))
    assert second.container_id != first.container_id
    assert list(fake_docker.containers) == [second.container_id]  # the exited one was removed

    EngineRecords(settings().run_dir).remove("qwen-1a2b3c4d")
    third = launch(settings(), request(str(model_dir), context_size=2048))  # other arguments
    assert third.container_id != second.container_id
    assert list(fake_docker.containers) == [third.container_id]


# --- exit facts and logs -> classification -----------------------------------------------------


def fixture_block(engine: str, note: str) -> list[str]:
    """The lines of the fixture block whose header contains `note`."""
    lines, inside = [], False
    for line in (FIXTURES / f"{engine}.txt").read_text().splitlines():
        if line.startswith("### EXPECT"):
            if inside:
                break
            inside = note in line
        elif inside:
            lines.append(line)
    assert lines, note
    return lines


@pytest.mark.parametrize(
    ("exit_code", "oom_killed", "note", "code"),
    [
        (137, True, "host RAM exhausted while reading shards", ErrorCode.OOM),
        (137, False, "`docker kill` by someone", ErrorCode.CONTAINER_EXITED),
        (1, False, "older torch spelling", ErrorCode.OOM),
        (1, False, "no GPU visible at all", ErrorCode.CUDA_ERROR),
        (1, False, "a truncated safetensors shard", ErrorCode.MODEL_LOADING_FAILURE),
    ],
)
def test_exit_status_and_logs_are_classified(fake_docker, model_dir, exit_code, oom_killed, note, code):
    handle = launch(settings(), request(str(model_dir)))
    assert EngineView.of(handle).alive()

    fake_docker.exit(handle.container_id, exit_code, oom_killed=oom_killed, logs=fixture_block("vllm", note))

    view = EngineView.of(handle)
    assert not view.alive()
    failure = view.exit_failure()
    assert failure.code is code, failure
    assert failure.exit_code == exit_code
    assert failure.log_lines


def test_dockers_own_start_error_reaches_the_classifier(fake_docker, model_dir):
    handle = launch(settings(), request(str(model_dir)))
    fake_docker.exit(
        handle.container_id, 128,
        error="failed to create task: nvidia-container-cli: initialization error: nvml error: driver not loaded",
    )
    failure = EngineView.of(handle).exit_failure()
    assert failure.code is ErrorCode.CUDA_ERROR
    assert failure.log_lines[-1].startswith("docker: failed to create task")


def test_stop_removes_the_container_and_keeps_its_output(fake_docker, model_dir):
    handle = launch(settings(), request(str(model_dir)))
    fake_docker.log(handle.container_id, "INFO:     Application startup complete.")

    stop_instance(EngineRecords(settings().run_dir), "qwen-1a2b3c4d", grace_s=3)

    assert fake_docker.containers == {}
    [stopped] = fake_docker.requests_to("POST", f"/containers/{handle.container_id}/stop")
    assert stopped.query["t"] == ["3"]
    [removed] = fake_docker.requests_to("DELETE", f"/containers/{handle.container_id}")
    assert removed.query["force"] == ["True"]
    assert EngineRecords(settings().run_dir).get("qwen-1a2b3c4d") is None
    log = Path(handle.log_path).read_text()
    assert log.startswith("=== berth: container berth-qwen-1a2b3c4d: " + IMAGE)
    assert "Application startup complete." in log
    stop_instance(EngineRecords(settings().run_dir), "qwen-1a2b3c4d")  # idempotent


def test_node_shutdown_stops_containers_and_marks_them(fake_docker, model_dir):
    launch(settings(), request(str(model_dir)))
    assert stop_all_for_node_shutdown(settings()) == 1
    assert fake_docker.containers == {}
    assert EngineRecords(settings().run_dir).get("qwen-1a2b3c4d").stopped_by_shutdown


# --- Docker cannot run it -----------------------------------------------------------------------


def failure_of(error: ApplicationError) -> dict:
    return error.details[0]


def test_no_docker_engine_is_engine_unavailable(fake_docker, model_dir, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(ApplicationError) as raised:
        launch(settings(), request(str(model_dir)))
    assert failure_of(raised.value)["code"] == "ENGINE_UNAVAILABLE"
    assert "runs in Docker on this node, but no Docker engine answers" in str(raised.value)


def test_docker_going_away_fails_container_stops_but_not_process_stops(fake_docker, model_dir):
    launch(settings(), request(str(model_dir)))
    fake_docker.stop()
    records = EngineRecords(settings().run_dir)
    stop_instance(records, "llama-00000000")  # no record: a container, if any, is best effort
    with pytest.raises(container_runtime.DockerUnavailable):
        stop_instance(records, "qwen-1a2b3c4d")  # a recorded container must go: retried until Docker is back
    assert records.get("qwen-1a2b3c4d") is not None


def test_a_missing_image_says_what_to_pull(fake_docker, model_dir):
    fake_docker.missing_images.add(IMAGE)
    with pytest.raises(ApplicationError) as raised:
        launch(settings(), request(str(model_dir)))
    assert failure_of(raised.value)["code"] == "ENGINE_UNAVAILABLE"
    assert f"docker pull {IMAGE}" in str(raised.value)


def test_no_gpu_runtime_is_a_cuda_error_and_leaves_no_container(fake_docker, model_dir):
    fake_docker.start_error = 'could not select device driver "" with capabilities: [[gpu]]'
    with pytest.raises(ApplicationError) as raised:
        launch(settings(), request(str(model_dir)))
    assert failure_of(raised.value)["code"] == "CUDA_ERROR"
    assert "NVIDIA Container Toolkit" in str(raised.value)
    assert fake_docker.containers == {}


# --- readiness against a stub that answers like vLLM's /health ---------------------------------


class VllmHealthStub:
    """/health (and /models/<name>/health, as through the gateway): 200 while healthy, 503 once
    the engine died. Not listening until start(): connection refused, as while vLLM loads."""

    def __init__(self, port: int):
        self.port = port
        self.healthy = True
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> "VllmHealthStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if not self.path.endswith("/health"):
                    self.send_error(404)
                    return
                body = b"" if stub.healthy else b'{"error": "EngineDeadError"}'
                self.send_response(200 if stub.healthy else 503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def health_stub(monkeypatch):
    stub = VllmHealthStub(free_port())
    monkeypatch.setenv("BERTH_GATEWAY_URL", f"http://127.0.0.1:{stub.port}")  # the "route" answers too
    yield stub
    stub.stop()


async def test_probe_refused_then_healthy_then_dead(health_stub):
    engine = get_engine("vllm")
    base = f"http://127.0.0.1:{health_stub.port}"
    async with httpx.AsyncClient(timeout=2) as client:
        assert await engine.probe(client, base) is Readiness.STARTING
        health_stub.start()
        assert await engine.probe(client, base) is Readiness.READY
        health_stub.healthy = False
        assert await engine.probe(client, base) is Readiness.UNHEALTHY


ENGINE_DIED = [
    "(APIServer pid=1) INFO:     127.0.0.1:51724 - \"POST /v1/chat/completions HTTP/1.1\" 200 OK",
    "(EngineCore_DP0 pid=140) ERROR 07-02 16:21:09 [core.py:797] RuntimeError: CUDA error: an illegal memory access was encountered",
    "(APIServer pid=1) ERROR 07-02 16:21:09 [async_llm.py:420] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
]


async def test_ready_after_refusals_then_supervised_until_the_engine_dies(fake_docker, model_dir, health_stub, monkeypatch):
    handle = launch(settings(), request(str(model_dir), port=health_stub.port))
    env = ActivityEnvironment()
    waiting = asyncio.create_task(env.run(await_ready, ReadyRequest(handle=handle, startup_timeout_s=30)))
    await asyncio.sleep(0.4)
    assert not waiting.done(), "ready while nothing answered"
    health_stub.start()
    outcome = await asyncio.wait_for(waiting, 10)
    assert outcome.ready and outcome.failure is None

    monkeypatch.setattr(supervision, "HEALTH_INTERVAL_S", 0.05)
    watching = asyncio.create_task(env.run(supervise, handle))
    await asyncio.sleep(0.3)
    assert not watching.done()
    fake_docker.log(handle.container_id, *ENGINE_DIED)
    health_stub.healthy = False  # the API server outlives its engine and says 503
    outcome = await asyncio.wait_for(watching, 10)
    assert outcome.failure.code is ErrorCode.CUDA_ERROR
    assert "stopped answering its health check (unhealthy, unhealthy, unhealthy)" in outcome.failure.message


async def test_a_503_while_starting_fails_at_once_with_the_log(fake_docker, model_dir, health_stub):
    handle = launch(settings(), request(str(model_dir), port=health_stub.port))
    fake_docker.log(handle.container_id, *ENGINE_DIED)
    health_stub.healthy = False
    health_stub.start()
    outcome = await asyncio.wait_for(
        ActivityEnvironment().run(await_ready, ReadyRequest(handle=handle, startup_timeout_s=600)), 10
    )
    assert outcome.failure.code is ErrorCode.CUDA_ERROR
    assert outcome.failure.message.startswith("the engine is running but its health check says it is broken")


async def test_a_container_that_exits_while_loading_is_reported_with_its_evidence(fake_docker, model_dir, health_stub):
    handle = launch(settings(), request(str(model_dir), port=health_stub.port))
    waiting = asyncio.create_task(
        ActivityEnvironment().run(await_ready, ReadyRequest(handle=handle, startup_timeout_s=600))
    )
    await asyncio.sleep(0.2)
    fake_docker.exit(handle.container_id, 1, logs=fixture_block("vllm", "older torch spelling"))
    outcome = await asyncio.wait_for(waiting, 10)
    assert outcome.failure.code is ErrorCode.OOM
    assert outcome.failure.exit_code == 1


async def test_supervise_sees_a_container_exit_within_a_second(fake_docker, model_dir, health_stub):
    handle = launch(settings(), request(str(model_dir), port=health_stub.port))
    health_stub.start()
    watching = asyncio.create_task(ActivityEnvironment().run(supervise, handle))
    await asyncio.sleep(0.2)
    fake_docker.exit(handle.container_id, 137, oom_killed=True)
    loop = asyncio.get_running_loop()
    exited_at = loop.time()
    outcome = await asyncio.wait_for(watching, 10)
    assert loop.time() - exited_at < container_runtime_poll() + 0.5
    assert outcome.failure.code is ErrorCode.OOM


def container_runtime_poll() -> float:
    from berth.node.engine_watch import CONTAINER_POLL_S

    return CONTAINER_POLL_S


# --- the engine's own log patterns keep the fixtures' verdicts ---------------------------------


@pytest.mark.parametrize("engine", ["vllm", "mlx"])
def test_engine_patterns_agree_with_the_log_fixtures(engine):
    blocks, lines, expect = [], [], None
    for line in (FIXTURES / f"{engine}.txt").read_text().splitlines():
        if line.startswith("### EXPECT"):
            if expect is not None:
                blocks.append((expect, lines))
            expect, lines = line.split()[2], []
        elif expect is not None:
            lines.append(line)
    blocks.append((expect, lines))
    patterns = get_engine(engine).log_patterns
    for expect, lines in blocks:
        plain, with_engine = classify_log(lines), classify_log(lines, patterns)
        assert (with_engine.code if with_engine else None) == (plain.code if plain else None), lines


def test_container_runtime_needs_the_instance_label():
    spec = VllmEngine().container_request(request("/srv/models/m"))
    unlabelled = type(spec)(**{**spec.__dict__, "labels": {}})
    with pytest.raises(ValueError, match="berth.instance"):
        container_runtime.launch(unlabelled)
