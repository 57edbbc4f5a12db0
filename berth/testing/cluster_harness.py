"""A berth cluster on one host, for tests and benchmarks: the first node is `berth up`
(berth.testing.harness.RunningStack) bound to its own loopback address, the others are `berth join`
processes, each with its own $BERTH_HOME, BERTH_NODE_ID, BERTH_NODE_ADDRESS (127.0.0.x: every
address of 127.0.0.0/8 binds on Linux), gateway/metrics/files ports and BERTH_PORT_RANGE, all with
the cluster token the first node made, against its one Temporal.

    with Cluster(tmp_path, ["127.0.0.51", "127.0.0.52", "127.0.0.53"]) as cluster:
        cluster.start()
        cluster.kill_node("n2")          # kill -9 of its join, worker, gateway and engines
        cluster.restart_node("n2")

Every process of a node is found by its $BERTH_HOME (in its environment: the supervisor, worker,
gateway and the engines, which berth.node.process_runtime starts with the worker's environment).
`close()` (the context manager's exit, and an atexit hook for clusters a test forgot) continues
frozen processes, kills what is left of every node and stops `berth up`: no orphans, even when a
test fails. Each helper's tests use their own addresses (docs/cluster.md, "what was run where").
"""

import atexit
import os
import signal
import subprocess
import weakref
from pathlib import Path

import httpx
import psutil

from berth.common.atomic_write import write_atomically
from berth.common.cluster_token import CLUSTER_TOKEN_ENV, cluster_token_path
from berth.common.sealing import key_path
from berth.settings import MODEL_ROOTS_ENV, Settings
from berth.testing.harness import CliProcess, RunningStack, RunsCli, free_port, free_port_block, processes_with_home

JOIN_READY_LINE = "berth joined as node"
# the first node's pieces that are the cluster's, not the node's: they survive kill_node/freeze_node
CLUSTER_PIECES = ("berth.api.server", "server start-dev")
_open_clusters: "weakref.WeakSet[Cluster]" = weakref.WeakSet()


def _node_ports_env() -> dict[str, str]:
    return {
        "BERTH_GATEWAY_PORT": str(free_port()),
        "BERTH_GATEWAY_METRICS_PORT": str(free_port()),
        "BERTH_WORKER_METRICS_PORT": str(free_port()),
        "BERTH_FILES_PORT": str(free_port()),
        "BERTH_PORT_RANGE": free_port_block(),
    }


class JoinedNode(RunsCli):
    """`berth join` as a user runs it, in a subprocess (its own process group)."""

    def __init__(self, node_id: str, address: str, home: Path, env: dict[str, str]):
        self.node_id, self.address, self.home = node_id, address, home
        self.env = env
        self.cli = CliProcess("join", JOIN_READY_LINE, env, new_session=True)

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def start(self, args: list[str] = (), timeout_s: float = 60, wait: bool = True) -> "JoinedNode":
        if not self.cli.launch(args, timeout_s, wait):
            raise RuntimeError(f"berth join ({self.node_id}) did not come up:\n" + "".join(self.output))
        return self

    def running(self) -> bool:
        return self.cli.running()

    def terminate(self, timeout_s: float = 120) -> int | None:
        """SIGTERM, as systemd or Ctrl-C would: the node drains, then stops. Its exit status."""
        return self.cli.terminate(timeout_s)

    def processes(self) -> list[psutil.Process]:
        return processes_with_home(self.home)


class Cluster:
    """A first node (`berth up`) and joined nodes, on one host. Node ids n1, n2, ... by default."""

    def __init__(
        self,
        base_dir: Path,
        addresses: list[str],
        node_ids: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        node_env: dict[str, dict[str, str]] | None = None,
        share_api_token: bool = False,
        token_file: bool = True,
        share_secret_key: bool = True,
    ):
        """`addresses[0]` is the first node's; `extra_env` goes to every node, `node_env[id]` to one.
        `share_api_token`: joined nodes get the API token too (by default they have only the cluster
        token, as on real machines). `token_file`: joined nodes get the token with --token-file (else
        BERTH_CLUSTER_TOKEN). `share_secret_key`: joined nodes get a copy of the first node's
        $BERTH_HOME/secret-key (they open the `env` values the API sealed)."""
        self.base_dir = Path(base_dir)
        self.addresses = list(addresses)
        self.node_ids = list(node_ids or [f"n{i + 1}" for i in range(len(addresses))])
        self.extra_env = dict(extra_env or {})
        self.node_env = node_env or {}
        self.share_api_token = share_api_token
        self.token_file = token_file
        self.share_secret_key = share_secret_key
        self.first: RunningStack | None = None
        self.joined: dict[str, JoinedNode] = {}
        self._frozen: set[int] = set()
        _open_clusters.add(self)

    # ---- start ----------------------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> "Cluster":
        first_id, first_address = self.node_ids[0], self.addresses[0]
        self.first = RunningStack(self.base_dir / first_id, extra_env={
            **self.extra_env,
            "BERTH_NODE_ID": first_id,
            "BERTH_NODE_ADDRESS": first_address,
            "BERTH_FILES_PORT": str(free_port()),
            **self.node_env.get(first_id, {}),
        })
        self.first.start(timeout_s=timeout_s)
        for node_id, address in zip(self.node_ids[1:], self.addresses[1:]):
            self.add_node(node_id, address, timeout_s=timeout_s)
        return self

    @property
    def temporal_address(self) -> str:
        return self.first.settings.temporal_address

    @property
    def token_path(self) -> Path:
        return cluster_token_path(self.first.settings)

    def cluster_token(self) -> str:
        return self.token_path.read_text().strip()

    def join_env(self, node_id: str, address: str) -> dict[str, str]:
        """What a joined node runs with (before `extra_env` and its `node_env`)."""
        first = self.first.settings
        env = {
            key: value for key, value in os.environ.items()
            if not key.startswith("BERTH_") or key in ("BERTH_WORKFLOW_SANDBOX",)
        }
        env.update({
            "BERTH_HOME": str(self.base_dir / node_id),
            "BERTH_NODE_ID": node_id,
            "BERTH_NODE_ADDRESS": address,
            "BERTH_TEMPORAL_ADDRESS": first.temporal_address,
            "BERTH_API_URL": first.api_url,
            MODEL_ROOTS_ENV: self.first.env.get(MODEL_ROOTS_ENV, ""),
            **_node_ports_env(),
        })
        if not self.token_file:
            env[CLUSTER_TOKEN_ENV] = self.cluster_token()
        if self.share_api_token:
            env["BERTH_API_TOKEN"] = self.first.api_token()
        env.update(self.extra_env)
        env.update(self.node_env.get(node_id, {}))
        return env

    def add_node(self, node_id: str, address: str, timeout_s: float = 60, wait: bool = True) -> JoinedNode:
        node = JoinedNode(node_id, address, self.base_dir / node_id, self.join_env(node_id, address))
        if self.share_secret_key:  # as docs/cluster.md says: a copy of the first node's, 0600
            first_key = key_path(self.first.settings)
            if first_key.exists():
                node.home.mkdir(parents=True, exist_ok=True)
                write_atomically(key_path(node.settings), first_key.read_text())
        self.joined[node_id] = node
        if node_id not in self.node_ids:
            self.node_ids.append(node_id)
            self.addresses.append(address)
        node.start(self._join_args(), timeout_s=timeout_s, wait=wait)
        return node

    def _join_args(self) -> list[str]:
        return ["--token-file", str(self.token_path)] if self.token_file else []

    def restart_node(self, node_id: str, timeout_s: float = 60) -> JoinedNode:
        """A joined node's `berth join` again, same home, ports and environment."""
        node = self.joined[node_id]
        node.start(self._join_args(), timeout_s=timeout_s)
        return node

    # ---- what tests reach -------------------------------------------------------------------------

    def settings(self, node_id: str) -> Settings:
        return self.first.settings if node_id == self.node_ids[0] else self.joined[node_id].settings

    def gateway_url(self, node_id: str) -> str:
        return self.settings(node_id).peer_gateway_url

    def api(self) -> httpx.Client:
        return self.first.api()

    async def client(self):
        return await self.first.client()

    def node_processes(self, node_id: str) -> list[psutil.Process]:
        """Every live process of the node: for a joined node its `berth join`, worker, gateway and
        engines; for the first node its worker, gateway and engines (not Temporal, not the API, not
        `berth up` itself: those are the cluster's)."""
        if node_id != self.node_ids[0]:
            return self.joined[node_id].processes()
        up = self.first.process.pid if self.first.process else None
        found = []
        for process in processes_with_home(self.first.home, exclude={up} if up else set()):
            try:
                cmdline = " ".join(process.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if not any(piece in cmdline for piece in CLUSTER_PIECES):
                found.append(process)
        return found

    # ---- break things -----------------------------------------------------------------------------

    def stop_node(self, node_id: str, timeout_s: float = 120) -> int | None:
        """SIGTERM to a joined node's `berth join` (it drains, then stops); its exit status."""
        return self.joined[node_id].terminate(timeout_s)

    def kill_node(self, node_id: str) -> list[int]:
        """kill -9 of every process of the node, at once (all are stopped first, so that none sees
        another die and reacts). For the first node, `berth up` is frozen first so that it does not
        restart its worker and gateway (thaw_node / close continue it). The pids killed."""
        if node_id == self.node_ids[0] and self.first.process:
            self._signal([self.first.process.pid], signal.SIGSTOP)
            self._frozen.add(self.first.process.pid)
        processes = self.node_processes(node_id)
        pids = [process.pid for process in processes]
        self._signal(pids, signal.SIGSTOP)
        self._signal(pids, signal.SIGKILL)
        self._frozen.difference_update(pids)
        for process in processes:
            try:
                process.wait(5)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
                pass
        if node_id in self.joined and self.joined[node_id].process is not None:
            try:
                self.joined[node_id].process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return pids

    def freeze_node(self, node_id: str) -> list[int]:
        """SIGSTOP every process of the node (a frozen machine, a partition): the pids."""
        pids = [process.pid for process in self.node_processes(node_id)]
        if node_id == self.node_ids[0] and self.first.process:
            pids.append(self.first.process.pid)
        self._signal(pids, signal.SIGSTOP)
        self._frozen.update(pids)
        return pids

    def thaw_node(self, node_id: str) -> None:
        """SIGCONT what freeze_node (or kill_node on the first node) stopped."""
        pids = [process.pid for process in self.node_processes(node_id)]
        if node_id == self.node_ids[0] and self.first.process:
            pids.append(self.first.process.pid)
        self._signal(pids, signal.SIGCONT)
        self._frozen.difference_update(pids)

    @staticmethod
    def _signal(pids: list[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    # ---- clean up ---------------------------------------------------------------------------------

    def homes(self) -> list[Path]:
        return [self.base_dir / node_id for node_id in self.node_ids]

    def leftovers(self) -> list[psutil.Process]:
        found = []
        for home in self.homes():
            found += processes_with_home(home)
        return found

    def close(self) -> list[psutil.Process]:
        """Stop everything: joined nodes killed (no drain: a test is over), `berth up` stopped, then
        whatever is left of any node killed. Returns what had to be killed at the end (a test that
        cares asserts it is empty)."""
        self._signal(sorted(self._frozen), signal.SIGCONT)
        self._frozen.clear()
        for node in self.joined.values():
            pids = [process.pid for process in node.processes()]
            if node.process is not None and node.process.poll() is None:
                pids.append(node.process.pid)
            self._signal(pids, signal.SIGSTOP)
            self._signal(pids, signal.SIGKILL)
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        if self.first is not None:
            self.first.stop()
        left = self.leftovers()
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=5)
        _open_clusters.discard(self)
        return left

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _close_forgotten_clusters() -> None:
    for cluster in list(_open_clusters):
        try:
            cluster.close()
        except Exception:  # noqa: BLE001 - the interpreter is going away: best effort
            pass
