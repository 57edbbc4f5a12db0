"""Open-loop chat load through a gateway (P7, P8, P9): requests start at a fixed rate whatever the
answers take; what answered 200 (its latency) and what did not (why). And the wait for a
deployment's state that these rows watch between loads."""

import asyncio
import time
from collections.abc import Callable

import httpx

from berth.domain.state import DeploymentState
from berth.testing.harness import deployment_state

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def open_loop_chats(url: str, headers: dict, rate: float, keep_going: Callable[[], bool]) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    failures: list[str] = []

    async def one(http: httpx.AsyncClient) -> None:
        started = time.perf_counter()
        try:
            answer = await http.post(url, json=CHAT)
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(f"{answer.status_code} {answer.text[:80]}")
        except httpx.HTTPError as error:
            failures.append(repr(error)[:120])

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as http:
        tasks, start, n = [], time.perf_counter(), 0
        while keep_going():
            tasks.append(asyncio.ensure_future(one(http)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    return latencies, failures


async def until_state(client, name: str, predicate: Callable[[DeploymentState], bool], timeout_s: float = 120) -> DeploymentState:
    """The deployment's state once `predicate` holds, or the last one seen after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = await deployment_state(client, name)
        if predicate(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)
