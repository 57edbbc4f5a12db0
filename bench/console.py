"""The web console's deployments table with N deployments: the first page, server-rendered
(GET /ui/deployments: the API's first page of 50 rows, as HTML), and the live update its script
polls (GET /ui/api/deployments), through a session cookie as a browser has it. Target: the first
page within 300 ms (p99).

Two places measure it: P5a, with its N stand-in deployments (`console_reads`, beside the REST
reads), and P5d, a stack of its own with N parked deployment workflows (scale.park: real
workflows of the deployment type in Temporal, REQUESTED, no engine), for a machine that cannot
run P5a's N stand-ins: `python -m bench.run --only P5d --scale 1000`.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.common import Bench, Row, ms, percentile, stack_session, summary
from berth.common.console_login import issue_login_code, login_link
from berth.domain.temporal_names import WORKFLOW_TYPE

IDS = {"P5d"}
TARGET_S = 0.300


def console_session(stack) -> httpx.Client:
    """An HTTP client logged into the console with a one-time link, as a browser would be."""
    base = f"http://127.0.0.1:{stack.settings.api_port}"
    http = httpx.Client(base_url=base, timeout=60)
    answer = http.get(login_link(base, issue_login_code(stack.settings)).removeprefix(base), follow_redirects=False)
    if answer.status_code != 303 or "berth_console" not in http.cookies:
        http.close()
        raise RuntimeError(f"console login failed: HTTP {answer.status_code}")
    return http


def _timed(http: httpx.Client, path: str, n: int) -> tuple[list[float], int]:
    samples, rows = [], 0
    for _ in range(n):
        started = time.perf_counter()
        answer = http.get(path)
        samples.append(time.perf_counter() - started)
        answer.raise_for_status()
        rows = answer.text.count("<tr data-name=")
    return samples, rows


async def console_reads(stack, n: int) -> dict:
    """{'console_first_page': samples, 'console_live_update': samples, 'console_rows': [rows shown]}
    (lists only: P5a summarises every entry of its reads)."""

    def run() -> dict:
        http = console_session(stack)
        try:
            _timed(http, "/ui/deployments", 2)  # warm-up: templates compiled, connection open
            first, rows = _timed(http, "/ui/deployments", n)
            live, _ = _timed(http, "/ui/api/deployments", n)
        finally:
            http.close()
        return {"console_first_page": first, "console_live_update": live, "console_rows": [rows]}

    return await asyncio.to_thread(run)


def console_row(bench: Bench, label: str, reads: dict, notes: list[str]) -> Row:
    first, live = reads["console_first_page"], reads["console_live_update"]
    return Row(
        "P5d" if label.startswith("parked") else "P5a",
        f"console: first page of the deployments table, {label} ({reads['console_rows'][0]} rows shown)",
        f"p99 <= {ms(TARGET_S)}",
        f"p50 {ms(percentile(first, 50))} / p99 {ms(percentile(first, 99))}",
        f"live update p50 {ms(percentile(live, 50))} / p99 {ms(percentile(live, 99))}", "-",
        passed=percentile(first, 99) <= TARGET_S,
        values={"first_page": summary(first) | {"samples": None}, "live_update": summary(live) | {"samples": None},
                "rows_shown": reads["console_rows"][0]},
        notes=[f"{len(first)} sequential GET /ui/deployments with the session cookie (HTML of the first page); "
               "the live update is GET /ui/api/deployments, which console.js polls every 0.75 s", *notes],
    )


async def parked_table(bench: Bench, asked: int) -> None:
    """P5d: N parked deployment workflows, then the console's reads."""
    from bench import scale

    tiny = bench.tiny_model()
    with stack_session(bench, "console") as stack:
        client = await stack.client()
        started = time.perf_counter()
        parked = await scale.park(client, asked, tiny)
        query = f"WorkflowType = '{WORKFLOW_TYPE}'"
        deadline = time.perf_counter() + 60
        while (await client.count_workflows(query)).count < parked and time.perf_counter() < deadline:
            await asyncio.sleep(0.5)
        listed = (await client.count_workflows(query)).count
        bench.log(f"P5d: {parked} parked deployments in {time.perf_counter() - started:.0f} s ({listed} listed)")
        await asyncio.sleep(2)  # let the visibility store settle before timing the list
        reads = await console_reads(stack, bench.runs(50, 20))
        in_browser = await asyncio.to_thread(browser_loads, stack, bench.runs(20, 10))
    notes = [f"{parked} deployment workflows parked on a queue no worker polls (REQUESTED, as berth's search "
             "attributes say): real rows of the list, no engines; the table of P5a's stand-ins is timed in P5a"]
    if in_browser:
        notes.append(f"in chromium (headless, Playwright), navigation start to the load event of /ui/deployments: "
                     f"p50 {ms(percentile(in_browser, 50))} / p99 {ms(percentile(in_browser, 99))} "
                     f"({len(in_browser)} loads; the request, the HTML, the stylesheet and console.js)")
    row = console_row(bench, f"parked N={listed}", reads, notes)
    row.values["browser_load"] = summary(in_browser) | {"samples": None} if in_browser else None
    bench.add(row)


def browser_loads(stack, n: int) -> list[float]:
    """Seconds from navigation start to the load event of the table in chromium; [] without one."""
    from berth.testing.browser import chromium, why_no_browser

    if why_no_browser() is not None:
        return []
    base = f"http://127.0.0.1:{stack.settings.api_port}"
    samples = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(login_link(base, issue_login_code(stack.settings)))
        for _ in range(n):
            page.goto(f"{base}/ui/deployments", wait_until="load")
            timing = page.evaluate(
                "(() => { const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime; })()"
            )
            samples.append(timing / 1000)
    return samples
