"""`berth join`: this machine as a node of an existing berth, in the foreground.

Two pieces (berth.worker.supervisor supervises them, as it does `berth up`'s four): the berth
worker (`python -m berth.worker.main`, polling `berth` and `berth-node-<BERTH_NODE_ID>` on the
Temporal at BERTH_TEMPORAL_ADDRESS; it joins the cluster workflow itself) and the gateway (Traefik,
berth.worker.gateway, on BERTH_NODE_ADDRESS), each with its state under this node's own
$BERTH_HOME. No Temporal, no API: the gateway's forwardAuth asks the cluster's API (BERTH_API_URL).

Before anything starts, what the node needs is checked (join_problems): Temporal's address, reachable;
the cluster token; the API's URL; the node id; the Temporal client options. On Ctrl-C/SIGTERM the
node is drained first (berth.worker.node_drain), then the worker, the engines and the gateway stop.
"""

import asyncio
import re
import socket
import sys
from collections.abc import Mapping
from datetime import timedelta

from berth.common.cluster_token import CLUSTER_TOKEN_ENV, cluster_token_path
from berth.common.sealing import KEY_ENV, SealError, key_path, load_key
from berth.common.temporal_options import TemporalOptionsError, temporal_options
from berth.domain.cluster import check_node_id
from berth.settings import CONTROL_TASK_QUEUE, Settings
from berth.worker.gateway import gateway_argv
from berth.worker.processes import ManagedProcess
from berth.worker.prometheus_config import write_join_prometheus_config
from berth.worker.supervisor import StackError, Supervisor, gateway_answers, gateway_bind, stop_signals
from berth.worker.worker_ready import worker_ready

TEMPORAL_ADDRESS_ENV = "BERTH_TEMPORAL_ADDRESS"
# what a gateway's rule can hold (berth.node.peer_routes checks the same); `berth up` makes 43 of them
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
MIN_TOKEN_CHARS = 16
API_URL_ENV = "BERTH_API_URL"
REACH_TIMEOUT_S = 3.0


def split_address(address: str) -> tuple[str, int]:
    """host:port (IPv6 as [::1]:7233) -> (host, port); ValueError when it is not one."""
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(address)
    return host, int(port)


def reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port opens; else why not."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.timeout:
        return f"no answer within {timeout_s:.0f} s"
    except OSError as error:
        return error.strerror or str(error)


def join_problems(settings: Settings, env: Mapping[str, str], token: str | None) -> list[str]:
    """What keeps this machine from joining, each with what to do; empty when it may start."""
    problems = []
    address = (env.get(TEMPORAL_ADDRESS_ENV) or "").strip()
    if not address:
        problems.append(
            f"{TEMPORAL_ADDRESS_ENV} is not set: give the address of the cluster's Temporal (host:port), "
            "e.g. the first node's, which `berth up` prints"
        )
    else:
        try:
            why = reachable(address)
        except ValueError:
            why = None
            problems.append(f"{TEMPORAL_ADDRESS_ENV}={address!r} is not host:port (e.g. 10.0.0.1:7233)")
        if why:
            problems.append(
                f"Temporal at {address} ({TEMPORAL_ADDRESS_ENV}) does not answer: {why}. Is the first node up, "
                "and is its Temporal port reachable from this machine (docs/cluster.md)?"
            )
    if not token:
        problems.append(
            f"no cluster token: set {CLUSTER_TOKEN_ENV}, or pass --token-file with a copy of the first node's "
            "$BERTH_HOME/cluster-token (the nodes of one berth share it; `berth up` creates it)"
        )
    elif len(token) < MIN_TOKEN_CHARS or not TOKEN_CHARS.fullmatch(token):
        problems.append(
            f"the cluster token must be at least {MIN_TOKEN_CHARS} characters of letters, digits and ._~+/=- "
            "(it stands in the gateways' routing rules): use the first node's $BERTH_HOME/cluster-token"
        )
    if not (env.get(API_URL_ENV) or "").strip():
        problems.append(
            f"{API_URL_ENV} is not set: give the cluster's API (e.g. http://10.0.0.1:8000); this node's gateway "
            "asks it whether a request may pass"
        )
    try:
        check_node_id(settings.node_id)
    except ValueError as error:
        problems.append(f"BERTH_NODE_ID: {error}")
    try:
        temporal_options(settings)
    except TemporalOptionsError as error:
        problems.append(str(error))
    try:
        load_key(settings)
    except SealError as error:
        problems.append(str(error))
    from berth.worker.node_drain import drain_timeout_s

    try:
        drain_timeout_s(env)
    except SystemExit as error:
        problems.append(str(error).removeprefix("berth: "))
    return problems


def secret_key_line(settings: Settings) -> str:
    """Whether this node can open the `env` values the API sealed (the same key as the API's)."""
    if load_key(settings) is not None:
        return f"  secret    the key that opens deployments' env values ({KEY_ENV} or {key_path(settings)})"
    return (
        f"  secret    NONE: a deployment with `env` values placed here fails at launch; give this node the first "
        f"node's {KEY_ENV} (or a copy of its $BERTH_HOME/secret-key at {key_path(settings)}, mode 0600)"
    )


class NodeStack(Supervisor):
    def __init__(self, settings: Settings, out=sys.stdout):
        super().__init__(settings, out)
        logs = settings.logs_dir
        self.gateway = ManagedProcess("traefik", gateway_argv(settings), logs / "traefik.log")
        self.worker = ManagedProcess("worker", [sys.executable, "-m", "berth.worker.main"], logs / "worker.log")
        self.processes = [self.gateway, self.worker]
        self.client = None  # the Temporal client: the id check at start, the drain at the end
        self.prometheus_config = None

    async def start(self) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        s = self.settings
        self.check_ports_free([
            ("the gateway (BERTH_GATEWAY_PORT)", *gateway_bind(s)),
            ("the worker's metrics (BERTH_WORKER_METRICS_PORT)", "127.0.0.1", s.worker_metrics_port),
            ("the gateway's metrics (BERTH_GATEWAY_METRICS_PORT)", "127.0.0.1", s.gateway_metrics_port),
            ("the node's file server (BERTH_FILES_PORT)", "127.0.0.1", s.files_port),
        ], "is another berth running on this machine with these ports?")
        await self._connect()
        from berth.worker.node_drain import id_taken_by_another

        taken = await id_taken_by_another(self.client, s.node_id, s.peer_gateway_url)
        if taken:
            raise StackError(taken)
        self.prometheus_config = write_join_prometheus_config(s)
        for process in self.processes:
            process.start()
        await self.wait_for("Traefik", lambda: gateway_answers(s), self.gateway)
        await self.wait_for("the berth worker", lambda: worker_ready(s, self.worker.pid), self.worker)
        return loop.time() - started

    async def _connect(self) -> None:
        """A client of our own (the worker has its own): it proves the address, TLS and API key work."""
        from berth.common.temporal_connection import connect

        try:
            self.client = await connect(self.settings, connect_timeout=timedelta(seconds=10))
        except RuntimeError as error:
            raise StackError(
                f"cannot connect to Temporal at {self.settings.temporal_address} "
                f"({temporal_options(self.settings).describe()}): {error}"
            ) from None

    def print_summary(self, took_s: float) -> None:
        s = self.settings
        lines = [
            f"berth joined as node {s.node_id} ({took_s:.1f} s)",
            f"  worker    {' '.join(self.worker.argv)} (pid {self.worker.pid}): task queues "
            f"{CONTROL_TASK_QUEUE} and {s.node_queue}",
            f"  Temporal  {s.temporal_address} ({temporal_options(s).describe()})",
            f"  gateway   {' '.join(self.gateway.argv)} (pid {self.gateway.pid}): "
            f"{s.gateway_url}/models/<name>/v1/..., peers reach it at {s.peer_gateway_url}",
            f"  API       {s.api_url} (the gateway's forwardAuth asks it)",
            f"  token     the cluster token in {cluster_token_path(s)}",
            f"  home      {s.home} (logs in {s.logs_dir})",
            secret_key_line(s),
        ]
        if _loopback(s.node_address) and not _loopback(s.temporal_address.rpartition(":")[0].strip("[]")):
            lines.append(
                f"  note      BERTH_NODE_ADDRESS is {s.node_address}: the other machines cannot reach this node's "
                "gateway; set it to this machine's address on the cluster's network"
            )
        if self.prometheus_config:
            lines.append(f"  Prometheus  prometheus --config.file={self.prometheus_config}")
        lines.append(
            "Ctrl-C or SIGTERM drains this node (its instances move to other nodes), then stops its "
            "worker, engines and gateway."
        )
        self.say("\n".join(lines))

    async def drain(self, hurry: asyncio.Event) -> None:
        from berth.worker.node_drain import drain_node, drain_timeout_s

        if self.client is None:
            self.say("berth: no Temporal client: stopping without a drain")
            return
        await drain_node(self.client, self.settings.node_id, drain_timeout_s(), self.say, hurry)

    def shutdown(self) -> None:
        """The worker (after the drain), then this node's engines, then the gateway."""
        self.stop_worker_then_engines(self.worker, "their deployments place them again when this node is back")
        self.gateway.stop()


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


async def run_node(settings: Settings, out=sys.stdout) -> int:
    settings.ensure_dirs()
    node = NodeStack(settings, out)
    stop, hurry = asyncio.Event(), asyncio.Event()
    stop_signals(asyncio.get_running_loop(), stop, again=hurry.set)
    code, joined = 0, False
    try:
        took = await node.start()
        joined = True
        node.print_summary(took)
        await node.watch(stop)
    except StackError as error:
        node.say(f"berth: {error}")
        code = 1
    try:
        if joined and stop.is_set():
            node.say("berth: leaving the cluster")
            drained = asyncio.Event()
            keeping = asyncio.create_task(_keep_running(node, drained))  # the node serves while it drains
            try:
                await node.drain(hurry)
            finally:
                drained.set()
                await keeping
    finally:
        node.say("berth: shutting down")
        await asyncio.get_running_loop().run_in_executor(None, node.shutdown)
        node.say("berth: stopped")
    return code


async def _keep_running(node: NodeStack, done: asyncio.Event) -> None:
    try:
        await node.watch(done)
    except StackError as error:
        node.say(f"berth: {error}")
