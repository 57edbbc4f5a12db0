"""The HTTP client that health probes share: one per event loop (and per set of headers), reused by
every await_ready and supervise activity of the worker.

A fresh httpx client loads the CA bundle into a new TLS context: 30-90 ms of CPU on the worker's
event loop and ~0.9 MB held for as long as it lives, once per activity, i.e. per deployment. Probes
are plain HTTP to engines and the gateway on loopback, so no TLS context is needed at all (the
client's transport is berth.activities.probe_transport, which speaks plain HTTP only), and one
client per loop keeps the cost flat in the number of deployments.
"""

from __future__ import annotations

import asyncio
import weakref

import httpx

from berth.activities.probe_transport import ProbeTransport

# A connect on loopback either happens at once or is refused; the slack is for a loaded machine.
PROBE_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
# One connection per probe, none kept alive (ProbeTransport): with httpcore's pool, keeping an idle
# connection per engine made probing O(engines) each (it scans every pooled connection on every
# request): 27% of a core for 119 supervised engines, measured with py-spy. A loopback connect is
# ~0.1 ms.

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


def probe_client(headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """The shared client of the running event loop that sends these headers."""
    loop = asyncio.get_running_loop()
    by_headers = _clients.setdefault(loop, {})
    key = tuple(sorted((headers or {}).items()))
    client = by_headers.get(key)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(transport=ProbeTransport(), timeout=PROBE_TIMEOUT, headers=headers)
        by_headers[key] = client
    return client


async def close_probe_clients() -> None:
    """Close the running loop's clients (the worker calls this on its way out)."""
    for client in _clients.pop(asyncio.get_running_loop(), {}).values():
        await client.aclose()
