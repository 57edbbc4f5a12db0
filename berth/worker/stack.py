"""`berth up`: the whole local stack in the foreground, every piece a real server on loopback.

Temporal (dev server, SQLite under $BERTH_HOME), Traefik (file provider on $BERTH_HOME/routes),
the berth worker and the REST API start together; `up` waits until each one answers, prints where
everything is, restarts a piece that dies (a bounded number of times), and on Ctrl-C/SIGTERM stops
everything it started, engines included. Deployments live in Temporal: the next `berth up` brings
them back.

`berth up` only starts, checks and stops processes, so it imports nothing heavy: no temporalio (the
worker says when it polls: berth.worker.worker_ready), no FastAPI, no Docker SDK. Its children
are spawned before anything else is imported, so that their own start-up (imports, Temporal's
SQLite) runs while this one waits. What stops the engines at the end (berth.node.engine_launch,
which needs the Docker SDK) is imported on the way down, while the worker is stopping.
"""

import asyncio
import os
import signal
import socket
import sys
import threading
import time

from berth.common.api_token import TOKEN_ENV, ensure_api_token, token_path
from berth.common.console_login import issue_login_code, login_link
from berth.common.sealing import SealError, ensure_key
from berth.api.server import api_ready, api_url
from berth.settings import API_NODE_ENV, CONTROL_TASK_QUEUE, NAMESPACE, Settings
from berth.worker.gateway import gateway_argv, gateway_ready
from berth.worker.processes import ManagedProcess
from berth.worker.temporal_server import temporal_answers, temporal_argv, temporal_env
from berth.worker.worker_ready import worker_ready

START_TIMEOUT_S = 60
MAX_RESTARTS_PER_MINUTE = 5  # BERTH_MAX_RESTARTS_PER_MINUTE overrides it


def max_restarts_per_minute() -> int:
    return int(os.environ.get("BERTH_MAX_RESTARTS_PER_MINUTE") or MAX_RESTARTS_PER_MINUTE)


class StackError(RuntimeError):
    pass


class Stack:
    def __init__(self, settings: Settings, out=sys.stdout):
        self.settings = settings
        self.out = out
        logs = settings.logs_dir
        self.temporal = ManagedProcess("temporal", temporal_argv(settings), logs / "temporal.log", temporal_env())
        self.gateway = ManagedProcess("traefik", gateway_argv(settings), logs / "traefik.log")
        self.worker = ManagedProcess(
            "worker", [sys.executable, "-m", "berth.worker.main"], logs / "worker.log"
        )
        self.api = ManagedProcess(
            "api", [sys.executable, "-m", "berth.api.server"], logs / "api.log",
            {API_NODE_ENV: settings.node_id},  # beside this node: it checks model paths against its roots
        )
        self.processes = [self.temporal, self.gateway, self.worker, self.api]
        self._restart_times: dict[str, list[float]] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ---- start ----------------------------------------------------------------------------------

    async def start(self) -> float:
        started = time.monotonic()
        self._check_ports_free()
        ensure_api_token(self.settings)  # before the API starts: it serves with this token
        try:  # the key the API seals env values with and the worker opens them with
            ensure_key(self.settings)
        except SealError as error:
            raise SystemExit(f"berth: {error}") from None
        for process in self.processes:
            process.start()  # all at once: the worker retries until Temporal answers
        await self._wait("Temporal", lambda: temporal_answers(self.settings), self.temporal)
        await self._wait("Traefik", lambda: gateway_ready(self.settings), self.gateway)
        # the worker connects to Temporal and waits until Temporal lists it polling both queues
        await self._wait("the berth worker", lambda: worker_ready(self.settings, self.worker.pid), self.worker)
        await self._wait("the berth API", lambda: api_ready(self.settings), self.api)
        return time.monotonic() - started

    def _check_ports_free(self) -> None:
        for what, port in (
            ("Temporal (BERTH_TEMPORAL_PORT)", self.settings.temporal_port),
            ("the Temporal UI (BERTH_UI_PORT)", self.settings.ui_port),
            ("the gateway (BERTH_GATEWAY_PORT)", self.settings.gateway_port),
            ("the berth API (BERTH_API_PORT)", self.settings.api_port),
        ):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    raise StackError(
                        f"port {port} for {what} is already in use: is another `berth up` running? "
                        "Stop it, or set that variable to a free port."
                    ) from None

    async def _wait(self, what: str, check, process: ManagedProcess) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not check():
            if not process.running():
                raise StackError(
                    f"{what} exited with status {process.exit_code()} while starting; "
                    f"its log ({process.log_path}) ends with:\n{process.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StackError(f"{what} did not answer within {START_TIMEOUT_S} s; see {process.log_path}")
            await asyncio.sleep(0.02)

    def print_summary(self, took_s: float) -> None:
        s = self.settings
        self.say(
            f"berth is up ({took_s:.1f} s)\n"
            f"  gateway      {s.gateway_url}/models/<name>/v1/...\n"
            f"  API          {api_url(s)} (docs at /docs; token in {self._token_source()})\n"
            f"  console      {self._console_link()} (one-time link; `berth ui` prints another)\n"
            f"  Temporal UI  http://127.0.0.1:{s.ui_port}\n"
            f"  Temporal     {s.temporal_address} (namespace {NAMESPACE}, task queues "
            f"{CONTROL_TASK_QUEUE} and {s.node_queue})\n"
            f"  home         {s.home}\n"
            "Ctrl-C stops berth and its engines; deployments come back on the next `berth up`."
        )

    def _console_link(self) -> str:
        """A one-time login link for the web console (berth.common.console_login)."""
        return login_link(api_url(self.settings), issue_login_code(self.settings))

    def _token_source(self) -> str:
        return TOKEN_ENV if os.environ.get(TOKEN_ENV) else str(token_path(self.settings))

    # ---- run ------------------------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart a piece that died, unless it keeps dying."""
        while not stop.is_set():
            for process in self.processes:
                if not process.running() and not stop.is_set():
                    self._restart(process)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    def _restart(self, process: ManagedProcess) -> None:
        now = time.monotonic()
        recent = [t for t in self._restart_times.get(process.name, []) if now - t < 60] + [now]
        self._restart_times[process.name] = recent
        if len(recent) > max_restarts_per_minute():
            raise StackError(
                f"{process.name} died {len(recent)} times in a minute; giving up. Its log "
                f"({process.log_path}) ends with:\n{process.log_tail()}"
            )
        self.say(f"berth: {process.name} exited with status {process.exit_code()}; restarting it")
        process.restarts += 1
        process.start()

    # ---- stop -----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """API, then worker (so that no activity sees its engine die), then engines, router, Temporal."""
        importing = _import_in_background("berth.node.engine_launch")  # while the worker stops
        self.api.stop()
        self.worker.stop(grace_s=10)
        importing.join()
        from berth.node.engine_launch import stop_all_for_node_shutdown

        stopped = stop_all_for_node_shutdown(self.settings)
        if stopped:
            self.say(f"berth: stopped {stopped} engine(s); their deployments come back on the next `berth up`")
        self.gateway.stop()
        self.temporal.stop()


def _import_in_background(module: str) -> threading.Thread:
    thread = threading.Thread(target=__import__, args=(module,), daemon=True)
    thread.start()
    return thread


async def run_stack(settings: Settings, on_ready=None) -> int:
    settings.ensure_dirs()
    stack = Stack(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        took = await stack.start()
        stack.print_summary(took)
        if on_ready is not None:
            await on_ready(stack)
        await stack.watch(stop)
        return 0
    except StackError as error:
        stack.say(f"berth: {error}")
        return 1
    finally:
        stack.say("berth: shutting down")
        await asyncio.get_running_loop().run_in_executor(None, stack.shutdown)
        stack.say("berth: stopped")
