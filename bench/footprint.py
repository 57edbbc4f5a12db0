"""P6 footprint: resident memory of everything berth runs besides the engines, with 10 deployments.

Ten tiny-GGUF deployments are started at once and awaited until all are DEPLOYED; after 3 s of
steady serving (health probes running), RSS (psutil) is sampled 5 times, 0.5 s apart, over every
process started with this stack's $BERTH_HOME: `berth up` itself, the Temporal dev server, Traefik,
the worker, the API; engines (processes carrying BERTH_INSTANCE_ID, and their /bin/sh wrappers) are
counted apart. The figure is the largest of the 5 sums. RSS includes each process's mapped binary
and libraries; the anonymous part (RssAnon, what the processes allocated) is reported beside it.
"""

from __future__ import annotations

import asyncio
import contextlib

import psutil

from bench.common import Bench, Row, component, spec, stop_all, wait_status
from berth.domain.status import DeploymentStatus
from berth.testing.harness import processes_with_home, start_deployment

TARGET_MB = 500
DEPLOYMENTS = 10
IDS = {"P6"}


def anonymous_rss(pid: int) -> int:
    """RssAnon: resident memory the process allocated itself, without its mapped binary and libraries."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_by_component(home) -> tuple[dict[str, int], dict[str, int]]:
    rss: dict[str, int] = {}
    anon: dict[str, int] = {}
    for process in processes_with_home(home):
        part = component(process)
        with contextlib.suppress(psutil.Error):
            rss[part] = rss.get(part, 0) + process.memory_info().rss
            if part != "engines":
                anon[part] = anon.get(part, 0) + anonymous_rss(process.pid)
    return rss, anon


async def run(bench: Bench, stack, client) -> None:
    tiny = bench.tiny_model()
    names = [f"p6-{i}" for i in range(DEPLOYMENTS)]
    for name in names:
        await start_deployment(client, spec(name, tiny))
    for name in names:
        _, state = await wait_status(client, name, lambda s: s.status in (DeploymentStatus.DEPLOYED, DeploymentStatus.FAILED), 180)
        if state.status is not DeploymentStatus.DEPLOYED:
            raise RuntimeError(f"{name}: {state.status.value}: {state.error}")
    await asyncio.sleep(3)
    samples = []
    for _ in range(5):
        samples.append(memory_by_component(stack.home))
        await asyncio.sleep(0.5)
    await stop_all(client, names)

    def control_plane(rss: dict[str, int]) -> int:
        return sum(v for k, v in rss.items() if k not in ("engines", "gone"))

    rss, anon = max(samples, key=lambda s: control_plane(s[0]))
    total_mb = control_plane(rss) / 1e6
    anon_mb = sum(anon.values()) / 1e6
    parts = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(rss.items(), key=lambda kv: -kv[1]) if k != "engines")
    bench.add(Row(
        "P6", f"RSS of the control plane with {DEPLOYMENTS} tiny deployments", f"<= {TARGET_MB} MB",
        f"{total_mb:.0f} MB", f"engines {rss.get('engines', 0) / 1e6:.0f} MB", "-",
        passed=total_mb <= TARGET_MB,
        values={"rss_mb": {k: round(v / 1e6, 1) for k, v in rss.items()},
                "anon_rss_mb": {k: round(v / 1e6, 1) for k, v in anon.items()},
                "control_plane_rss_mb": round(total_mb, 1), "control_plane_anon_rss_mb": round(anon_mb, 1)},
        notes=[f"RSS MB by piece: {parts}; of the total, {anon_mb:.0f} MB is anonymous (allocated) memory: "
               + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(anon.items(), key=lambda kv: -kv[1]))
               + "; the rest is mapped binaries and libraries (Temporal's and Traefik's binaries are 156 and 185 MB)",
               "measured after the earlier measurements ran on the same stack (the worker's caches are warm, as in use)"],
    ))
