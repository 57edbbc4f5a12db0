"""A real berth stack for tests and benchmarks: `berth up` in a subprocess on free ports, in its own
$BERTH_HOME, plus the few client calls that tests and benchmarks share."""

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from berth.common.api_token import load_api_token
from berth.api.server import api_url
from berth.domain.spec import DeploymentSpec
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus
from berth.settings import CONTROL_TASK_QUEUE, MODEL_ROOTS_ENV, Settings
from berth.common.temporal_connection import connect
from berth.domain.temporal_names import STATE_QUERY, WORKFLOW_TYPE, workflow_id
from berth.workflows.deployment import DeploymentInput


# Ports for test stacks are drawn below Linux's ephemeral range (32768-60999), from which every
# outgoing connection takes its local port: a port the kernel handed out for bind(0) can be taken by
# a health probe's connection before `berth up` binds it (seen in CI: the API's bind failed with
# "address already in use"). Stack ports from one span, engine blocks from another.
STACK_PORTS = (10000, 20000)
ENGINE_PORT_BLOCKS = (22000, 32000)
METRICS_PORTS = ("BERTH_WORKER_METRICS_PORT", "BERTH_TEMPORAL_METRICS_PORT", "BERTH_GATEWAY_METRICS_PORT")
_handed_out: set[int] = set()  # never the same port twice in one test session


def free_port() -> int:
    for _ in range(200):
        port = random.randrange(*STACK_PORTS)
        if port not in _handed_out and port_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {STACK_PORTS[0]}-{STACK_PORTS[1] - 1}")


def free_port_block(size: int = 100) -> str:
    for _ in range(50):
        low = random.randrange(ENGINE_PORT_BLOCKS[0], ENGINE_PORT_BLOCKS[1] - size, size)
        if low not in _handed_out and all(port_free(port) for port in range(low, low + 5)):
            _handed_out.add(low)
            return f"{low}-{low + size - 1}"
    raise RuntimeError("no free block of ports for engines")


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def processes_with_home(home: Path, *, exclude: set[int] = frozenset()) -> list[psutil.Process]:
    """Every live process started with BERTH_HOME=home (the stack, its engines), minus `exclude`."""
    found = []
    for process in psutil.process_iter(["pid"]):
        if process.pid in exclude or process.pid == os.getpid():
            continue
        try:
            if process.environ().get("BERTH_HOME") == str(home) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


class CliProcess:
    """`berth <command>` in a subprocess, as a user runs it: its output kept line by line, up once a
    line starts with `ready_line`; stopped with SIGTERM (as systemd or Ctrl-C would), killed if it
    does not end in time. `new_session`: its own process group, so that a test's Ctrl-C reaches the
    test, which then cleans up."""

    def __init__(self, command: str, ready_line: str, env: dict[str, str], new_session: bool = False):
        self.command, self.ready_line, self.env, self.new_session = command, ready_line, env, new_session
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []
        self._up = threading.Event()
        self._reader: threading.Thread | None = None

    def launch(self, args: list[str] = (), timeout_s: float = 60, wait: bool = True) -> bool:
        """Start it; with `wait`, whether it printed its ready line within timeout_s and still runs."""
        self.output.clear()
        self._up.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "berth.api.cli", self.command, *args],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=self.new_session,
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        return not wait or (self._up.wait(timeout_s) and self.process.poll() is None)

    def _read_output(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith(self.ready_line):
                self._up.set()

    def wait_for_output(self, text: str, timeout_s: float = 30) -> str:
        """The first line that contains `text`, once it is printed (not waiting past its exit)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ended = self.process.poll() is not None
            if ended:
                self._reader.join(5)  # every line it printed is read
            for line in list(self.output):
                if text in line:
                    return line
            if ended:
                break
            time.sleep(0.05)
        raise AssertionError(f"berth {self.command} did not print {text!r}:\n" + "".join(self.output))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then a kill after timeout_s. Its exit status (None: never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


class RunsCli:
    """What a harness around one CliProcess (`self.cli`) shows of it."""

    cli: CliProcess

    @property
    def process(self) -> subprocess.Popen | None:
        return self.cli.process

    @property
    def output(self) -> list[str]:
        return self.cli.output

    def wait_for_output(self, text: str, timeout_s: float = 30) -> str:
        return self.cli.wait_for_output(text, timeout_s)


class RunningStack(RunsCli):
    """`berth up` as a user runs it, in a subprocess."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None):
        self.home = home
        self.env = {
            **os.environ,
            "BERTH_HOME": str(home),
            "BERTH_TEMPORAL_PORT": str(free_port()),
            "BERTH_UI_PORT": str(free_port()),
            "BERTH_GATEWAY_PORT": str(free_port()),
            "BERTH_API_PORT": str(free_port()),
            "BERTH_FILES_PORT": str(free_port()),  # the node's file server (NODE:/path copies)
            # metrics endpoints on free ports, unless the environment turns one off (0), e.g. to
            # compare a benchmark with and without them
            **{name: str(free_port()) for name in METRICS_PORTS if os.environ.get(name) != "0"},
            "BERTH_PORT_RANGE": free_port_block(),
            "BERTH_NODE_ID": "test-node",
            **(extra_env or {}),
        }
        self.env.pop("BERTH_TEMPORAL_ADDRESS", None)
        # tests and benchmarks write their models into temporary folders: let the node read them
        # there (tests/conftest.py names pytest's own folder instead)
        self.env.setdefault(MODEL_ROOTS_ENV, tempfile.gettempdir())
        self.cli = CliProcess("up", "berth is up", self.env)

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def start(self, args: list[str] = (), timeout_s: float = 60) -> "RunningStack":
        if not self.cli.launch(args, timeout_s):
            self.stop()
            raise RuntimeError("berth up did not come up:\n" + "".join(self.output))
        return self

    def stop(self, timeout_s: float = 60) -> int:
        code = self.cli.terminate(timeout_s)
        return 0 if code is None else code

    def stop_and_reap(self) -> tuple[int, list[psutil.Process]]:
        """Stop `berth up`; kill whatever it left behind. Its exit status, and what was left (a test
        asserts both are clean)."""
        code = self.stop()
        leftovers = self.leftovers()
        for process in leftovers:
            process.kill()
        return code, leftovers

    def leftovers(self) -> list[psutil.Process]:
        exclude = {self.process.pid} if self.process and self.process.poll() is None else set()
        return processes_with_home(self.home, exclude=exclude)

    def worker_pid(self) -> int | None:
        for process in processes_with_home(self.home):
            try:
                if "berth.worker.main" in " ".join(process.cmdline()):
                    return process.pid
            except psutil.NoSuchProcess:
                continue
        return None

    async def client(self) -> Client:
        return await connect(self.settings)

    @property
    def api_url(self) -> str:
        return api_url(self.settings)

    def api_token(self) -> str:
        """The token `berth up` uses: BERTH_API_TOKEN, else the one it wrote to $BERTH_HOME/api-token."""
        token = load_api_token(self.settings, self.env)
        if token is None:
            raise RuntimeError(f"no API token under {self.home}: has `berth up` started?")
        return token

    def api(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for the REST API, with the stack's bearer token (or the one given)."""
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {token or self.api_token()}"},
            timeout=30,
        )

    def chat(self, name: str, token: str | None = "stack", max_tokens: int = 8) -> httpx.Response:
        """A chat completion through the gateway; token "stack" sends the stack's own, None none."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.api_token() if token == 'stack' else token}"
        return httpx.post(
            f"{self.settings.gateway_url}/models/{name}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": max_tokens},
            headers=headers,
            timeout=60,
        )


async def start_deployment(client: Client, spec: DeploymentSpec) -> WorkflowHandle:
    return await client.start_workflow(
        WORKFLOW_TYPE,
        DeploymentInput(spec=spec),
        id=workflow_id(spec.name),
        task_queue=CONTROL_TASK_QUEUE,
    )


async def deployment_state(client: Client, name: str) -> DeploymentState:
    handle = client.get_workflow_handle(workflow_id(name))
    return await handle.query(STATE_QUERY, result_type=DeploymentState)


UNANSWERED_QUERY = {RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNAVAILABLE}


async def wait_for_status(
    client: Client,
    name: str,
    statuses: set[DeploymentStatus] | DeploymentStatus,
    timeout_s: float = 60,
    poll_s: float = 0.02,
) -> DeploymentState:
    """Query until the status is one of `statuses`. A query that no worker answered (one was just
    killed: Temporal first waits for it on its sticky queue, and may give up with CANCELLED or
    DEADLINE_EXCEEDED) is asked again, until the timeout."""
    wanted = {statuses} if isinstance(statuses, DeploymentStatus) else set(statuses)
    deadline = time.monotonic() + timeout_s
    state, unanswered = None, None
    while time.monotonic() < deadline:
        try:
            state = await deployment_state(client, name)
        except RPCError as error:
            if error.status not in UNANSWERED_QUERY:
                raise
            unanswered = error
            await asyncio.sleep(poll_s)
            continue
        if state.status in wanted:
            return state
        await asyncio.sleep(poll_s)
    raise AssertionError(
        f"{name} did not reach {sorted(s.value for s in wanted)} within {timeout_s} s; last state:\n"
        + (state.model_dump_json(indent=1) if state else "none")
        + (f"\nlast unanswered query: {unanswered.status.name} {unanswered}" if unanswered else "")
    )


async def until_restarted_or_down(
    client: Client, name: str, old_pid: int, timeout_s: float = 30, poll_s: float = 0.01
) -> DeploymentState:
    """After killing a deployment's engine: the first state that is ERROR or FAILED, or DEPLOYED again
    with another engine. The first automatic restart is immediate, so ERROR may last less than a
    poll; the transitions keep it either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = await deployment_state(client, name)
        if state.status in (DeploymentStatus.ERROR, DeploymentStatus.FAILED) or (
            state.status is DeploymentStatus.DEPLOYED and state.pid != old_pid
        ):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: still {state.status.value} {timeout_s} s after its engine was killed")
        await asyncio.sleep(poll_s)


def wait_for_api_status(api: httpx.Client, name: str, statuses: set[str], timeout_s: float = 30) -> dict:
    """The deployment's state from the REST API once its status is one of `statuses` (as a user polls)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = api.get(f"/v1/deployments/{name}").json()
        if state["status"] in statuses or time.monotonic() > deadline:
            assert state["status"] in statuses, state
            return state
        time.sleep(0.05)


def engine_processes(home: Path, deployment: str) -> list[psutil.Process]:
    """Live engine processes of a deployment (not their /bin/sh wrappers), found by instance marker."""
    found = []
    for process in processes_with_home(home):
        try:
            marker = process.environ().get("BERTH_INSTANCE_ID", "")
            if marker.rsplit("-", 1)[0] == deployment and process.cmdline()[:1] != ["/bin/sh"]:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            continue
    return found
