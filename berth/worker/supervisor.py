"""What `berth up` (berth.worker.stack) and `berth join` (berth.worker.node_stack) share: a
foreground supervisor of child processes. It checks its ports are free, waits until each piece
answers, restarts a piece that dies (a bounded number of times), stops the engines on the way down,
and runs until Ctrl-C/SIGTERM.

Nothing heavy here (no temporalio, no FastAPI, no Docker SDK): what stops the engines
(berth.node.engine_launch) is imported on the way down, while the worker stops.
"""

import asyncio
import os
import signal
import socket
import sys
import threading
import time

from berth.common.http_check import answers_ok
from berth.settings import Settings
from berth.worker.gateway import static_config
from berth.worker.processes import ManagedProcess

START_TIMEOUT_S = 60
MAX_RESTARTS_PER_MINUTE = 5  # BERTH_MAX_RESTARTS_PER_MINUTE overrides it


def max_restarts_per_minute() -> int:
    return int(os.environ.get("BERTH_MAX_RESTARTS_PER_MINUTE") or MAX_RESTARTS_PER_MINUTE)


class StackError(RuntimeError):
    pass


def gateway_bind(settings: Settings) -> tuple[str, int]:
    """Where the gateway's web entry point listens, as its static config says (berth.worker.gateway)."""
    host, _, port = static_config(settings)["entryPoints"]["web"]["address"].rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def gateway_answers(settings: Settings) -> bool:
    """Traefik's /ping on the address it binds (not BERTH_GATEWAY_URL, which may be a proxy's)."""
    host, port = gateway_bind(settings)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return answers_ok(f"http://{f'[{host}]' if ':' in host else host}:{port}/ping")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return False
        except OSError:
            return True


class Supervisor:
    """Child processes in the foreground: `processes` in start order; subclasses say what to wait
    for (start), what to print, and how to stop (shutdown)."""

    processes: list[ManagedProcess]

    def __init__(self, settings: Settings, out=sys.stdout):
        self.settings = settings
        self.out = out
        self._restart_times: dict[str, list[float]] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def check_ports_free(self, ports: list[tuple[str, str, int]], hint: str) -> None:
        """(what, host, port) for each port this node binds; 0 is an endpoint turned off."""
        for what, host, port in ports:
            if port and port_in_use(host, port):
                raise StackError(
                    f"port {port} on {host} for {what} is already in use: {hint} Stop it, or set that "
                    "variable to a free port."
                )

    async def wait_for(self, what: str, check, process: ManagedProcess, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if not process.running():
                raise StackError(
                    f"{what} exited with status {process.exit_code()} while starting; "
                    f"its log ({process.log_path}) ends with:\n{process.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StackError(f"{what} did not answer within {timeout_s:.0f} s; see {process.log_path}")
            await asyncio.sleep(0.02)

    # ---- run ------------------------------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart a piece that died, unless it keeps dying."""
        while not stop.is_set():
            for process in self.processes:
                if not process.running() and not stop.is_set():
                    self.restart(process)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    def restart(self, process: ManagedProcess) -> None:
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

    def stop_worker_then_engines(self, worker: ManagedProcess, come_back: str) -> None:
        """The worker first (so that no activity sees its engine die), then this node's engines."""
        importing = _import_in_background("berth.node.engine_launch")  # while the worker stops
        worker.stop(grace_s=10)
        importing.join()
        from berth.node.engine_launch import stop_all_for_node_shutdown

        stopped = stop_all_for_node_shutdown(self.settings)
        if stopped:
            self.say(f"berth: stopped {stopped} engine(s); {come_back}")


def _import_in_background(module: str) -> threading.Thread:
    thread = threading.Thread(target=__import__, args=(module,), daemon=True)
    thread.start()
    return thread


def stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, again=None) -> None:
    """Ctrl-C and SIGTERM set `stop`; once it is set, another one calls `again` (if given)."""

    def handle() -> None:
        if stop.is_set() and again is not None:
            again()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handle)
