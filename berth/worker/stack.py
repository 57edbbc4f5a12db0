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
import sys

from berth.common.api_token import TOKEN_ENV, ensure_api_token, token_path
from berth.common.cluster_token import CLUSTER_TOKEN_ENV, cluster_token_path, ensure_cluster_token
from berth.common.console_login import issue_login_code, login_link
from berth.common.sealing import SealError, ensure_key
from berth.common.temporal_options import custom_options_set
from berth.api.server import api_host, api_ready, api_url
from berth.settings import API_NODE_ENV, CONTROL_TASK_QUEUE, Settings
from berth.worker.gateway import gateway_argv
from berth.worker.processes import ManagedProcess
from berth.worker.prometheus_config import write_prometheus_config
from berth.worker.supervisor import (  # noqa: F401 - START_TIMEOUT_S, max_restarts_per_minute: their old home
    START_TIMEOUT_S,
    StackError,
    Supervisor,
    gateway_answers,
    gateway_bind,
    max_restarts_per_minute,
)
from berth.worker.temporal_server import temporal_answers, temporal_argv, temporal_bind, temporal_env
from berth.worker.worker_ready import worker_ready


class Stack(Supervisor):
    def __init__(self, settings: Settings, out=sys.stdout):
        super().__init__(settings, out)
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
        self.prometheus_config = None

    # ---- start ----------------------------------------------------------------------------------

    async def start(self) -> float:
        started = asyncio.get_running_loop().time()
        refused = custom_options_set(self.settings)
        if refused:
            raise StackError(
                f"{', '.join(refused)}: `berth up` runs its own Temporal dev server, which has no TLS and "
                "no API key; these options are for a Temporal cluster of your own, reached by `berth join`, "
                "`berth worker` and the API with BERTH_TEMPORAL_ADDRESS (docs/cluster.md). Unset them."
            )
        self._check_ports_free()
        ensure_api_token(self.settings)  # before the API starts: it serves with this token
        ensure_cluster_token(self.settings)  # the nodes that join share it (docs/cluster.md)
        try:  # the key the API seals env values with and the worker opens them with
            ensure_key(self.settings)
        except SealError as error:
            raise SystemExit(f"berth: {error}") from None
        self.prometheus_config = write_prometheus_config(self.settings)
        for process in self.processes:
            process.start()  # all at once: the worker retries until Temporal answers
        await self.wait_for("Temporal", lambda: temporal_answers(self.settings), self.temporal)
        await self.wait_for("Traefik", lambda: gateway_answers(self.settings), self.gateway)
        # the worker connects to Temporal and waits until Temporal lists it polling both queues
        await self.wait_for("the berth worker", lambda: worker_ready(self.settings, self.worker.pid), self.worker)
        await self.wait_for("the berth API", lambda: api_ready(self.settings), self.api)
        return asyncio.get_running_loop().time() - started

    def _check_ports_free(self) -> None:
        s = self.settings
        self.check_ports_free([
            ("Temporal (BERTH_TEMPORAL_PORT)", temporal_bind(), s.temporal_port),
            ("the Temporal UI (BERTH_UI_PORT)", temporal_bind(), s.ui_port),
            ("the gateway (BERTH_GATEWAY_PORT)", *gateway_bind(s)),
            ("the berth API (BERTH_API_PORT)", api_host(), s.api_port),
            ("the worker's metrics (BERTH_WORKER_METRICS_PORT)", "127.0.0.1", s.worker_metrics_port),
            ("Temporal's metrics (BERTH_TEMPORAL_METRICS_PORT)", "127.0.0.1", s.temporal_metrics_port),
            ("the gateway's metrics (BERTH_GATEWAY_METRICS_PORT)", "127.0.0.1", s.gateway_metrics_port),
        ], "is another `berth up` running?")

    def print_summary(self, took_s: float) -> None:
        s = self.settings
        self.say(
            f"berth is up ({took_s:.1f} s)\n"
            f"  gateway      {s.gateway_url}/models/<name>/v1/...\n"
            f"  API          {api_url(s)} (docs at /docs; token in {self._token_source()})\n"
            f"  console      {self._console_link()} (one-time link; `berth ui` prints another)\n"
            f"  Temporal UI  http://127.0.0.1:{s.ui_port}\n"
            f"  Temporal     {s.temporal_address} (namespace {s.temporal_namespace}, task queues "
            f"{CONTROL_TASK_QUEUE} and {s.node_queue})\n"
            f"  Prometheus   prometheus --config.file={self.prometheus_config}\n"
            f"  home         {s.home}\n"
            f"  node         {s.node_id} at {s.node_address}; another machine joins with:\n"
            f"               {self.join_command()}\n"
            "Ctrl-C stops berth and its engines; deployments come back on the next `berth up`."
        )

    def join_command(self) -> str:
        """How another machine joins this berth (docs/cluster.md), naming the token's file, never the token."""
        s = self.settings
        if os.environ.get(CLUSTER_TOKEN_ENV):
            token = f"{CLUSTER_TOKEN_ENV}=<the {CLUSTER_TOKEN_ENV} given to this node>"
        else:
            token = f"{CLUSTER_TOKEN_ENV}=<the content of {cluster_token_path(s)}>"
        temporal = s.temporal_address
        if temporal_bind() != "127.0.0.1" and temporal.startswith("127.0.0.1:"):
            temporal = f"{s.node_address}:{s.temporal_port}"
        command = (
            f"BERTH_TEMPORAL_ADDRESS={temporal} BERTH_API_URL={api_url(s)} {token} "
            "BERTH_NODE_ID=<its id> BERTH_NODE_ADDRESS=<its address> berth join"
        )
        if temporal.startswith("127.") or api_url(s).startswith("http://127."):
            command += (
                "\n               (from this machine only: Temporal or the API listens on loopback; for other "
                "machines see docs/cluster.md)"
            )
        return command

    def _console_link(self) -> str:
        """A one-time login link for the web console (berth.common.console_login)."""
        return login_link(api_url(self.settings), issue_login_code(self.settings))

    def _token_source(self) -> str:
        return TOKEN_ENV if os.environ.get(TOKEN_ENV) else str(token_path(self.settings))

    # ---- stop -----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """API, then worker (so that no activity sees its engine die), then engines, router, Temporal."""
        self.api.stop()
        self.stop_worker_then_engines(self.worker, "their deployments come back on the next `berth up`")
        self.gateway.stop()
        self.temporal.stop()


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
