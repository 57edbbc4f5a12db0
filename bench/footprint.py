"""P6 footprint: resident memory of everything berth runs besides the engines, with 10 deployments.

Ten tiny-GGUF deployments are started at once and awaited until all are DEPLOYED; after 3 s of
steady serving (health probes running), RSS (psutil) is sampled 5 times, 0.5 s apart, over every
process started with this stack's $BERTH_HOME: `berth up` itself, the Temporal dev server, Traefik,
the worker, the API; engines (processes carrying BERTH_INSTANCE_ID, and their /bin/sh wrappers) are
counted apart. The figure is the largest of the 5 sums. RSS includes each process's mapped binary
and libraries; the anonymous part (RssAnon, what the processes allocated) is reported beside it.

How much of a mapped binary is resident depends on how its pages came into the page cache, not only
on the process. On this kernel (Linux 6.18, large folios in the page cache) a binary that something
once read from end to end (`cat`, a backup, a checksum) sits in the cache in large folios, and each
page fault then maps a whole folio: the same stack measured 593 MB instead of 475-480 MB (Traefik
168 vs 99 MB, Temporal 220 vs 171-174 MB; anonymous memory 216-222 MB in all three), for clean page
cache that nobody had touched. So before the stack that P6 measures starts, the Temporal and Traefik
binaries are dropped from the page cache (`drop_binaries_from_page_cache`) and come back through the
processes' own page faults, as after an install or a reboot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import psutil

from bench.common import Bench, Row, component, spec, stop_all, wait_status
from berth.domain.status import DeploymentStatus
from berth.testing.harness import processes_with_home, start_deployment

TARGET_MB = 500
DEPLOYMENTS = 10
IDS = {"P6"}


def control_plane_binaries() -> list[str]:
    from berth.worker.gateway import traefik_binary
    from berth.worker.temporal_server import temporal_binary

    return [temporal_binary(), traefik_binary()]


def drop_binaries_from_page_cache() -> list[str]:
    """Ask the kernel to drop the Temporal and Traefik binaries' cached pages (POSIX_FADV_DONTNEED:
    only pages no running process maps go, so call it while no stack runs). Returns what it did."""
    done = []
    for path in control_plane_binaries():
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            done.append(os.path.basename(path))
        except OSError as error:
            done.append(f"{os.path.basename(path)} not dropped ({error.strerror})")
    return done


def binary_sizes_mb() -> str:
    return " and ".join(f"{os.path.basename(p)} {os.path.getsize(p) / 1e6:.0f} MB" for p in control_plane_binaries())


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
               + f"; the rest is mapped binaries and libraries (the binaries: {binary_sizes_mb()})",
               "measured after the earlier measurements ran on the same stack (the worker's caches are warm, as in use); "
               "the Temporal and Traefik binaries were dropped from the page cache before the stack started "
               f"({', '.join(bench.shared.get('dropped_from_page_cache') or ['not done: P6 was not asked for'])}), "
               "so that what they map is what their own page faults brought in (see this module's docstring)"],
    ))
