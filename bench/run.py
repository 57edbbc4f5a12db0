"""`python -m bench.run [--quick] [--only P1,P4] [--out bench/results/latest.json] [--scale N]`

Runs berth's benchmarks on this machine in one go, prints the table (metric, target, berth, bare
engine, ratio or added time, pass/MISS) with the machine it ran on, and writes it all as JSON.

Order: P0 (its own `berth up` per run); then one stack for P1, P2/P3/P3b, P4, P6, P5b, P7/P8 (replicas), with P5c's
deployment supervised throughout; then a stack with the stand-in engine for P5a; then one with N
parked deployments for P5d (the console's table); then a three-node cluster for P9 (node loss).
Every stack is
stopped at the end of its part, and the run ends by checking that no process it started is left.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import console, crash, footprint, gateway, node_loss, overhead, replicas, scale, startup
from bench.common import (
    OVERCOMMIT,
    RESULTS_DIR,
    Bench,
    Row,
    markdown_table,
    machine,
    print_table,
    stack_session,
    write_json,
)

MAIN_STACK_IDS = overhead.IDS | crash.IDS | gateway.IDS | footprint.IDS | replicas.IDS | {"P5b", "P5c"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer runs and N=100 for P5a (a few minutes)")
    parser.add_argument("--only", help="comma-separated ids: P0,P1,P2,P3,P3b,P4,P5 (or P5a,P5b,P5c,P5d),P6,P7,P8,P9")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json", help="where to write the JSON")
    parser.add_argument("--scale", type=int, help="deployments for P5a and P5d (default 1000; --quick 100)")
    parser.add_argument("--concurrent", type=int, metavar="K",
                        help="tiny GGUF deployments at once for P5b (default: as many as free memory allows; --quick 20)")
    parser.add_argument("--skip-gemma", action="store_true", help="P1 on the tiny GGUF only")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (homes, logs)")
    return parser.parse_args(argv)


async def guarded(bench: Bench, ids: set[str], what: str, step) -> None:
    """Run one measurement; a failure becomes a row saying so, and the others still run."""
    if not any(bench.wants(i) for i in ids):
        return
    try:
        await step()
    except Exception as error:  # noqa: BLE001 - report and go on
        traceback.print_exc()
        first = (str(error).splitlines() or [""])[0]
        bench.add(Row(min(ids), f"{what}: not measured", "-", f"error: {type(error).__name__}: {first[:160]}", passed=False))


async def main_stack(bench: Bench) -> None:
    if bench.wants("P6"):
        bench.shared["dropped_from_page_cache"] = footprint.drop_binaries_from_page_cache()
    # P5b may run hundreds of engines; each tiny instance reserves its plan (259 MiB, mostly fixed
    # overhead) where it uses ~40 MB: the node offers the cluster more on purpose (docs/configuration.md)
    with stack_session(bench, "main", OVERCOMMIT, ports=1000) as stack:
        client = await stack.client()
        watch = None
        if bench.wants("P5c"):
            try:
                watch = await scale.start_history_watch(bench, client)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        await guarded(bench, overhead.IDS, "P1", lambda: overhead.run(bench, stack, client))
        await guarded(bench, crash.IDS, "P2/P3/P3b", lambda: crash.run(bench, stack, client))
        await guarded(bench, gateway.IDS, "P4", lambda: gateway.run(bench, stack, client))
        await guarded(bench, footprint.IDS, "P6", lambda: footprint.run(bench, stack, client))
        await guarded(bench, {"P5b"}, "P5b", lambda: scale.concurrent_tiny(bench, stack, client))
        await guarded(bench, replicas.IDS, "P7/P8", lambda: replicas.run(bench, stack, client))
        if watch is not None:
            await guarded(bench, {"P5c"}, "P5c", lambda: scale.finish_history_watch(bench, client, watch))


async def run(args: argparse.Namespace) -> int:
    only = {t.strip().upper() for t in args.only.split(",")} if args.only else None
    workdir = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    bench = Bench(args.quick, only, workdir)
    bench.shared["skip_gemma"] = args.skip_gemma
    bench.shared["concurrent"] = args.concurrent
    info = machine()
    print(f"berth bench ({'quick' if args.quick else 'full'}) on {info['cpu_model']}, {info['logical_cores']} cores, "
          f"{info['ram_gib']} GiB RAM ({info['ram_available_gib']} GiB available), load {info['load_average_at_start']}; "
          f"scratch {workdir}", flush=True)
    started = time.perf_counter()
    try:
        await guarded(bench, startup.IDS, "P0", lambda: startup.run(bench))
        if any(bench.wants(i) for i in MAIN_STACK_IDS):
            try:
                await main_stack(bench)
            except Exception as error:  # noqa: BLE001 - the stack itself did not come up
                traceback.print_exc()
                bench.add(Row("P1", "main stack: not measured", "-", f"error: {str(error).splitlines()[0][:200]}", passed=False))
        asked = args.scale or bench.runs(1000, 100)
        await guarded(bench, {"P5a"}, "P5a", lambda: scale.standin_scale(bench, asked))
        await guarded(bench, console.IDS, "P5d", lambda: console.parked_table(bench, asked))
        await guarded(bench, node_loss.IDS, "P9", lambda: node_loss.run(bench))
    finally:
        left = bench.final_check()
        runtime = time.perf_counter() - started
    print()
    print(f"machine: {info['cpu_model']}, {info['logical_cores']} logical cores ({info['physical_cores']} physical), "
          f"{info['ram_gib']} GiB RAM, {info['os']}, Python {info['python']}; load average at start "
          f"{info['load_average_at_start']}")
    print(f"bench runtime: {runtime:.0f} s ({'quick' if args.quick else 'full'})")
    print()
    print_table(bench.rows)
    print()
    for row in bench.rows:
        for note in row.notes:
            print(f"  {row.id} {row.metric}: {note}")
    print()
    if bench.failed_starts:
        print(f"`berth up` failed to start {len(bench.failed_starts)} time(s): " + "; ".join(bench.failed_starts))
    print("processes left behind: " + ("none" if not left else "; ".join(left)))
    write_json(args.out, bench, info, runtime, sys.argv[1:])
    args.out.with_suffix(".md").write_text(markdown_table(bench.rows, info, runtime, bench.quick))
    print(f"written: {args.out} and {args.out.with_suffix('.md')}")
    if not args.keep and not left:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"scratch kept: {workdir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
