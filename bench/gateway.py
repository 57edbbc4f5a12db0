"""P4 gateway overhead: small requests through Traefik vs straight to the engine.

One DEPLOYED tiny GGUF deployment. One httpx.Client (HTTP/1.1 keep-alive, so each side keeps one
connection open): GET {gateway}/models/NAME/health (Traefik strips the prefix and forwards to the
engine's /health) against GET http://127.0.0.1:PORT/health. Sequential requests in blocks of 100,
the two sides alternating block by block (and which goes first alternating too) to cancel drift;
200 warm-up requests each first. Added latency = the gateway's percentile minus the direct one.
With the API token sent exactly as `Bearer <token>` the route's fast router serves it; a quarter as
many requests with the token written `bearer <token>` time the fallback router, where Traefik asks
the API (forwardAuth) on every request (reported in the notes, no target). An inference key
scoped to the deployment (`POST /v1/keys`) always takes that router: the API's /v1/auth/check
looks the key up by its id and compares its SHA-256; it has rows of its own with the same targets
("P4 ... inference key"), as many requests as the admin token's, in the same interleaved blocks.
"""

from __future__ import annotations

import time

import httpx

from bench.common import Bench, Row, auth_headers, deploy, ms, percentile, spec, stop
from berth.domain.status import DeploymentStatus

BLOCK = 100
P50_TARGET_S = 0.001
P99_TARGET_S = 0.005
IDS = {"P4"}


def _timed(client: httpx.Client, url: str, headers: dict, samples: list[float], n: int) -> None:
    for _ in range(n):
        started = time.perf_counter_ns()
        response = client.get(url, headers=headers)
        samples.append((time.perf_counter_ns() - started) / 1e9)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")


async def run(bench: Bench, stack, client) -> None:
    name = "p4-gateway"
    _, _, state = await deploy(client, spec(name, bench.tiny_model()))
    if state.status is not DeploymentStatus.DEPLOYED:
        raise RuntimeError(f"{name}: {state.status.value}: {state.error}")
    blocks = bench.runs(30, 10)
    direct_url = f"http://127.0.0.1:{state.port}/health"
    gateway_url = f"{stack.settings.gateway_url}/models/{name}/health"
    headers = auth_headers(stack)  # the gateway may ask the API whether the caller may pass
    # The exact `Bearer <token>` header takes the route's fast router; the same token written another
    # way (scheme in lower case) takes the fallback router, which asks the API (forwardAuth) first.
    checked = {"Authorization": headers["Authorization"].replace("Bearer ", "bearer ", 1)} if headers else None
    direct, through, via_auth, keyed = [], [], [], []
    try:
        keyed_headers = _inference_key(stack, name) if headers else None
        with httpx.Client(timeout=10) as http:
            _timed(http, direct_url, {}, [], 200)
            _timed(http, gateway_url, headers, [], 200)
            order = [(direct_url, {}, direct), (gateway_url, headers, through)]
            if keyed_headers:
                _timed(http, gateway_url, keyed_headers, [], 200)
                order.append((gateway_url, keyed_headers, keyed))
            if checked and http.get(gateway_url, headers=checked).status_code == 200:
                _timed(http, gateway_url, checked, [], 50)
                order.append((gateway_url, checked, via_auth))
            for block in range(blocks):
                for url, h, samples in order if block % 2 == 0 else reversed(order):
                    _timed(http, url, h, samples, BLOCK if samples is not via_auth else BLOCK // 4)
    finally:
        await stop(client, name)
    values = {}
    for q in (50, 90, 99, 99.9):
        values[f"direct_p{q}_ms"] = percentile(direct, q) * 1000
        values[f"gateway_p{q}_ms"] = percentile(through, q) * 1000
        values[f"added_p{q}_ms"] = (percentile(through, q) - percentile(direct, q)) * 1000
    values["requests_each"] = len(direct)
    if keyed:
        for q in (50, 90, 99, 99.9):
            values[f"inference_key_p{q}_ms"] = percentile(keyed, q) * 1000
            values[f"inference_key_added_p{q}_ms"] = (percentile(keyed, q) - percentile(direct, q)) * 1000
    if via_auth:
        for q in (50, 99):
            values[f"forward_auth_p{q}_ms"] = percentile(via_auth, q) * 1000
            values[f"forward_auth_added_p{q}_ms"] = (percentile(via_auth, q) - percentile(direct, q)) * 1000
    note = (f"{len(direct)} sequential keep-alive GETs each side, blocks of {BLOCK} interleaved; "
            f"gateway {gateway_url.replace(stack.settings.gateway_url, '{gateway}')}, direct /health on the engine port"
            + ("; with the API token exactly as `Bearer <token>`, which the route's fast router matches (no API hop)"
               if headers else "")
            + (f"; the same token as `bearer <token>` takes the forwardAuth router (the API checks it): "
               f"{len(via_auth)} requests, added p50 +{ms(percentile(via_auth, 50) - percentile(direct, 50))}, "
               f"p99 +{ms(percentile(via_auth, 99) - percentile(direct, 99))}" if via_auth else ""))
    for q, target in ((50, P50_TARGET_S), (99, P99_TARGET_S)):
        added = percentile(through, q) - percentile(direct, q)
        bench.add(Row(
            "P4", f"gateway added latency p{q} (/health, keep-alive)", f"<= {ms(target)}",
            f"{ms(percentile(through, q))} via Traefik", f"{ms(percentile(direct, q))} direct", f"+{ms(added)}",
            passed=added <= target, values=values if q == 50 else {}, notes=[note] if q == 50 else [],
        ))
    for q, target in ((50, P50_TARGET_S), (99, P99_TARGET_S)) if keyed else ():
        added = percentile(keyed, q) - percentile(direct, q)
        bench.add(Row(
            "P4", f"gateway added latency p{q} (/health, keep-alive), inference key", f"<= {ms(target)}",
            f"{ms(percentile(keyed, q))} via Traefik + /v1/auth/check", f"{ms(percentile(direct, q))} direct",
            f"+{ms(added)}", passed=added <= target,
            notes=[f"{len(keyed)} requests with an inference key scoped to the deployment: the forwardAuth "
                   "router, the API checks the key on every request"] if q == 50 else [],
        ))


def _inference_key(stack, name: str) -> dict:
    """`Authorization` with a new inference key that opens only this deployment."""
    with stack.api() as api:
        response = api.post("/v1/keys", json={"name": "bench-p4", "deployments": [name]})
        if response.status_code != 201:
            raise RuntimeError(f"POST /v1/keys: {response.status_code} {response.text[:200]}")
        return {"Authorization": f"Bearer {response.json()['key']}"}
