"""The extra hop of a request served on another node: through the first gateway to an instance on
its own node, against through the first gateway, the peer node's gateway, to that node's instance.

    python -m bench.gateway_hop [--requests 1000]

Two nodes on one host (127.0.0.38, 127.0.0.39; berth.testing.gateway_nodes): their own homes,
Traefik with berth's static config, a tiny llama.cpp engine each (berth's launch code), routes
written by the configure_route activity. Deployment `hop-local` has node 1's engine as its only
server, `hop-peer` node 2's (so node 1's gateway sends it through node 2's, with the cluster token).
GET /models/<name>/health with the admin token (node 1's fast router), one keep-alive client,
sequential, in blocks of 100 alternating between the two (and the bare engine), after 200 warm-up
requests each. Prints p50/p99 of each and the added time. Not a test: nothing here is collected.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path

import httpx

from berth.domain.pipeline import RouteRequest, RouteServer
from berth.testing.gateway_nodes import StandinApi, make_node
from berth.testing.harness import processes_with_home
from berth.testing.tiny_gguf import write_tiny_gguf

BLOCK = 100
WARM_UP = 200


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def timed(http: httpx.Client, url: str, samples: list[float], n: int) -> None:
    for _ in range(n):
        started = time.perf_counter_ns()
        response = http.get(url)
        samples.append((time.perf_counter_ns() - started) / 1e6)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")


async def main(requests: int) -> dict[str, list[float]]:
    admin = "admin-" + secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="berth-hop-") as tmp:
        root = Path(tmp)
        (root / "api").mkdir()
        model = write_tiny_gguf(root / "tiny.gguf")
        api = StandinApi(root / "api", admin).start()
        token = secrets.token_urlsafe(32)
        n1 = make_node(root, "n1", "127.0.0.38", api.url, token, api_token=admin)
        n2 = make_node(root, "n2", "127.0.0.39", api.url, token)
        nodes = {"n1": n1.url, "n2": n2.url}
        try:
            for node in (n1, n2):
                node.start_gateway()
            local_port = n1.start_engine("hop-local", "hop-local-n1", model)
            peer_port = n2.start_engine("hop-peer", "hop-peer-n2", model)
            for name, server in (("hop-local", RouteServer(instance_id="hop-local-n1", node="n1", port=local_port)),
                                 ("hop-peer", RouteServer(instance_id="hop-peer-n2", node="n2", port=peer_port))):
                request = RouteRequest(deployment=name, engine="llamacpp", instances=[server], nodes=nodes)
                for node in (n1, n2):
                    await node.configure(request)
            await asyncio.sleep(1.0)
            urls = {
                "engine, no gateway": f"http://127.0.0.1:{local_port}/health",
                "gateway -> local instance": f"{n1.url}/models/hop-local/health",
                "gateway -> peer gateway -> instance": f"{n1.url}/models/hop-peer/health",
            }
            samples: dict[str, list[float]] = {label: [] for label in urls}
            with httpx.Client(headers={"Authorization": f"Bearer {admin}"}, timeout=10) as http:
                for url in urls.values():
                    timed(http, url, [], WARM_UP)
                order = list(urls.items())
                for block in range(max(1, requests // BLOCK)):
                    for label, url in (order if block % 2 == 0 else order[::-1]):
                        timed(http, url, samples[label], BLOCK)
            return samples
        finally:
            for node in (n1, n2):
                node.stop_engines()
                node.kill_gateway()
            api.stop()
            left = processes_with_home(n1.settings.home) + processes_with_home(n2.settings.home)
            if left:
                print(f"processes left behind: {left}")


def report(samples: dict[str, list[float]]) -> None:
    print(f"{'path':40} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for label, values in samples.items():
        print(f"{label:40} {len(values):>5} {percentile(values, 0.5):>8.3f} {percentile(values, 0.99):>8.3f}")
    local, peer = samples["gateway -> local instance"], samples["gateway -> peer gateway -> instance"]
    print(f"extra hop (peer - local): p50 +{percentile(peer, 0.5) - percentile(local, 0.5):.3f} ms, "
          f"p99 +{percentile(peer, 0.99) - percentile(local, 0.99):.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per path (default 1000)")
    report(asyncio.run(main(parser.parse_args().requests)))
