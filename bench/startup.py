"""P0 start-up: `berth up` -> every piece answering.

Each run starts `berth up` (RunningStack: a subprocess, free ports, a fresh $BERTH_HOME, so a cold
SQLite database) and times, from the spawn of the process:
  - the "berth is up" line, which `berth up` prints after Temporal accepts a client, Traefik answers
    /ping, the worker polls both of its task queues (and, where the stack has it, the REST API
    answers /healthz);
  - each piece on its own, polled every 10 ms by a side thread: Temporal's gRPC port accepting a
    connection, Traefik's /ping, the API's /healthz (when BERTH_API_PORT answers at all).
Then it stops the stack (SIGTERM) and times that too (no target; reported for information).
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import Bench, Row, secs, spread, start_failure, summary
from berth.testing.harness import RunningStack, processes_with_home

TARGET_S = 3.0
IDS = {"P0"}


def _probe_pieces(stack: RunningStack, started: float, seen: dict[str, float], stop: threading.Event) -> None:
    settings = stack.settings
    checks = {
        "temporal port": lambda: _connects(settings.temporal_port),
        "traefik /ping": lambda: _http_ok(f"{settings.gateway_url}/ping"),
        "api /healthz": lambda: _http_ok(f"http://127.0.0.1:{settings.api_port}/healthz"),
    }
    while not stop.is_set() and len(seen) < len(checks):
        for name, check in checks.items():
            if name not in seen and check():
                seen[name] = time.perf_counter() - started
        time.sleep(0.01)


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


async def run(bench: Bench) -> None:
    runs = bench.runs(5, 3)
    up_s: list[float] = []
    stop_s: list[float] = []
    pieces: dict[str, list[float]] = {}
    self_reported: list[float] = []
    failures: list[str] = []
    for i in range(runs):
        home = Path(tempfile.mkdtemp(prefix=f"p0-{i}-", dir=bench.workdir))
        bench.homes.append(home)
        stack = RunningStack(home)
        seen: dict[str, float] = {}
        done = threading.Event()
        started = time.perf_counter()
        prober = threading.Thread(target=_probe_pieces, args=(stack, started, seen, done), daemon=True)
        prober.start()
        try:
            try:
                stack.start(timeout_s=120)
            except RuntimeError as error:  # a start that fails is a result too: say why, go on
                reason = start_failure(error)
                bench.failed_starts.append(f"P0 run {i + 1}: {reason}")
                failures.append(f"run {i + 1}: {reason}")
                bench.log(f"P0 run {i + 1}/{runs}: berth up FAILED: {reason}")
                continue
            up_s.append(time.perf_counter() - started)
            # let the side prober see the pieces it has not seen yet (the API may come later)
            deadline = time.perf_counter() + 5
            while len(seen) < 3 and time.perf_counter() < deadline:
                time.sleep(0.01)
            line = next((l for l in stack.output if l.startswith("berth is up")), "")
            if "(" in line:
                self_reported.append(float(line.split("(", 1)[1].split(" s", 1)[0]))
        finally:
            done.set()
            prober.join(2)
            stopping = time.perf_counter()
            stack.stop(timeout_s=60)
            stop_s.append(time.perf_counter() - stopping)
            for process in processes_with_home(home):
                bench.cleanup.append(f"left by berth up (P0 run {i}): {process.pid}")
                process.kill()
        for name, t in seen.items():
            pieces.setdefault(name, []).append(t)
        bench.log(f"P0 run {i + 1}/{runs}: up {up_s[-1]:.2f} s; " + ", ".join(f"{k} {v:.2f} s" for k, v in seen.items()))

    if not up_s:
        raise RuntimeError("berth up never came up: " + "; ".join(failures))
    median_up = summary(up_s)["median"]
    api = pieces.get("api /healthz")
    notes = [
        "from spawn of `berth up` (python -m berth.api.cli up) to its 'berth is up' line; fresh $BERTH_HOME each run",
        "each piece, first answer after spawn (median): "
        + ", ".join(f"{k} {secs(summary(v)['median'])}" for k, v in sorted(pieces.items())),
        f"`berth up`'s own figure (after its imports): {spread(self_reported)}; shutdown (SIGTERM -> exit): {spread(stop_s)}",
    ]
    if failures:
        notes.append(f"{len(failures)} of {runs} starts FAILED: " + "; ".join(failures))
    bench.add(Row(
        "P0", "start-up: berth up -> all answering", f"<= {TARGET_S:g} s",
        spread(up_s) + (f" ({len(failures)} of {runs} starts failed)" if failures else ""),
        passed=median_up <= TARGET_S and not failures,
        values={"up_s": summary(up_s), "pieces_s": {k: summary(v) for k, v in pieces.items()},
                "self_reported_s": summary(self_reported), "stop_s": summary(stop_s), "failed_starts": failures},
        notes=notes,
    ))
    bench.add(Row(
        "P0", "start-up: -> API /healthz 200", f"<= {TARGET_S:g} s",
        spread(api) if api else "no API answered on BERTH_API_PORT",
        passed=(summary(api)["median"] <= TARGET_S) if api else None,
        values={"api_s": summary(api or [])},
    ))
