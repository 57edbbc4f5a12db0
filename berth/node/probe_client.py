"""The client that health probes share: one per set of headers, used by every await_ready and
supervise activity of the worker.

A client holds no connection and no TLS context (probes are plain HTTP to engines and the gateway
on loopback, one short request per connection: berth.node.probe_transport), so sharing it
only spares building one per look. (Before, each activity's own httpx client loaded the CA bundle:
30-90 ms of CPU and ~0.9 MB held per deployment; and httpcore's pool, keeping an idle connection
per engine, scanned every pooled connection on each request: 27% of a core for 119 engines.)
"""

from __future__ import annotations

from berth.node.probe_transport import ProbeClient

_clients: dict[tuple[tuple[str, str], ...], ProbeClient] = {}


def probe_client(headers: dict[str, str] | None = None) -> ProbeClient:
    """The shared client that sends these headers."""
    key = tuple(sorted((headers or {}).items()))
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = ProbeClient(headers=key)
    return client
