"""P7 and P8: replicas under a steady load (docs/replicas.md).

P7: two instances of the tiny GGUF, 20 chat requests/s through the gateway (open loop: a request
    every 50 ms whatever the others do), once without and once with one engine `kill -9`ed at 5 s;
    failed requests and p99 latency of each, and whether the killed instance came back into the route.
P8: the same load while the deployment is reconfigured (context 1024 -> 2048, rolled one instance
    at a time); failed requests, every instance new, and the time from the update to the last old
    instance gone against a bare engine start x replicas.
"""

import asyncio
import os
import signal
import time


from bench.chat_load import open_loop_chats, until_state
from bench.common import Bench, Row, auth_headers, bare_argv, ms, percentile, spawn_bare, spec, stop, stop_bare, wait_healthy
from berth.domain.temporal_names import RECONFIGURE_UPDATE, workflow_id
from berth.testing.harness import deployment_state, free_port, start_deployment

IDS = {"P7", "P8"}
RATE = 20.0
REPLICAS = 2


async def _load(stack, name: str, seconds: float, during=None) -> tuple[list[float], list[str]]:
    """Open-loop load for `seconds`; `during(elapsed)` is awaited once, in parallel, from the start."""
    url = f"{stack.settings.gateway_url}/models/{name}/v1/chat/completions"
    side = asyncio.ensure_future(during()) if during else None
    start = time.perf_counter()
    answered = await open_loop_chats(url, auth_headers(stack), RATE, lambda: time.perf_counter() - start < seconds)
    if side:
        await side
    return answered


async def run(bench: Bench, stack, client) -> None:
    seconds = bench.runs(20, 10)
    name = "p7-replicas"
    await start_deployment(client, spec(name, bench.tiny_model(), replicas=REPLICAS, context_size=1024))
    state = await until_state(client, name, lambda s: s.ready_replicas == REPLICAS)
    calm, calm_failed = await _load(stack, name, seconds)

    victim = state.instances[1]

    async def kill_at_5s() -> None:
        await asyncio.sleep(5.0)
        os.kill(victim.pid, signal.SIGKILL)

    killed, killed_failed = await _load(stack, name, seconds, kill_at_5s)
    back = await until_state(
        client, name, lambda s: s.ready_replicas == REPLICAS and s.instances[1].pid not in (None, victim.pid)
        and s.instances[1].routed, 60,
    )
    rejoined = back.instances[1].routed and back.instances[1].pid != victim.pid
    bench.add(Row(
        "P7", f"{REPLICAS} replicas, {RATE:g} req/s x {seconds} s, one engine kill -9 at 5 s", "0 failed",
        f"{len(killed_failed)} failed of {len(killed) + len(killed_failed)}, p99 {ms(percentile(killed, 99))}",
        f"no kill: {len(calm_failed)} failed, p99 {ms(percentile(calm, 99))}", "rejoined" if rejoined else "NOT rejoined",
        passed=not killed_failed and rejoined,
        values={"failed_with_kill": len(killed_failed), "failed_without": len(calm_failed),
                "p99_with_kill_s": percentile(killed, 99), "p99_without_s": percentile(calm, 99),
                "failures": killed_failed[:5]},
    ))

    # P8: reconfigure under the same load
    before = await deployment_state(client, name)
    handle = client.get_workflow_handle(workflow_id(name))
    rolled: dict = {}

    async def reconfigure() -> None:
        started = time.perf_counter()
        await handle.execute_update(RECONFIGURE_UPDATE, {"context_size": 2048})
        done = await until_state(client, name, lambda s: s.spec.context_size == 2048 and s.rollout is None
                            and len(s.instances) == REPLICAS and s.ready_replicas == REPLICAS, 120)
        rolled["s"], rolled["state"] = time.perf_counter() - started, done

    latencies, failed = await _load(stack, name, seconds, reconfigure)
    port = free_port()
    popen = spawn_bare(bench, bare_argv(bench.tiny_model(), port), bench.workdir / "bare-logs" / "p8.log")
    try:
        bare_s = wait_healthy(port, popen, time.perf_counter())
    finally:
        stop_bare(popen)
    after = rolled["state"]
    all_new = not {i.pid for i in before.instances} & {i.pid for i in after.instances}
    bench.add(Row(
        "P8", f"reconfigure (context 1024 -> 2048) of {REPLICAS} replicas under {RATE:g} req/s", "0 failed",
        f"{len(failed)} failed of {len(latencies) + len(failed)}; rolled in {rolled['s']:.2f} s; p99 {ms(percentile(latencies, 99))}",
        f"start x {REPLICAS}: {REPLICAS * bare_s:.2f} s", "all new" if all_new else "NOT all new",
        passed=not failed and all_new,
        values={"failed": len(failed), "rollout_s": rolled["s"], "bare_start_s": bare_s, "failures": failed[:5]},
    ))
    await stop(client, name)
