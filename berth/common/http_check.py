"""One cheap "does this URL answer 200?" for start-up checks polled every few milliseconds.

`berth up` polls Traefik's /ping and the API's /healthz every 20 ms while it starts. `httpx.get`
builds a client, and with it a TLS context loaded from the CA bundle (30-90 ms of CPU), on every
call, for what is plain HTTP on loopback; http.client from the standard library does none of that.
"""

import http.client
from urllib.parse import urlsplit


def answers_ok(url: str, timeout_s: float = 1.0) -> bool:
    """True when a GET of `url` (http:// or https://) answers 200; False on any error."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection = connection_class(parts.hostname, parts.port, timeout=timeout_s)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        finally:
            connection.close()
    except (OSError, http.client.HTTPException, ValueError):
        return False
