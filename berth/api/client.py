"""The REST API from Python, for the `berth` CLI (and tests): one method per route, JSON in and out.

Errors are two exceptions with a one-line message each: ApiUnreachable (no API answers: is
`berth up` running?) and ApiRequestError (the API said no: 4xx/5xx with its code and message).

httpx is imported when a BerthApi is made: `berth up` imports this module through the CLI and
never talks to the API itself, so it does not carry httpx (and the rich console it pulls in).
"""

import os
from collections.abc import Iterator, Mapping
from typing import Any

from berth.common.api_token import TOKEN_ENV, load_api_token, token_path
from berth.api.server import api_url
from berth.settings import Settings


LIST_PAGE_SIZE = 500  # rows per request when listing everything: few round trips, each quick


class ApiUnreachable(Exception):
    pass


class ApiRequestError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BerthApi:
    def __init__(self, base_url: str, token: str | None, timeout_s: float = 30.0, token_hint: str = ""):
        self.base_url = base_url
        self.token = token
        self.token_hint = token_hint or f"set {TOKEN_ENV}, or run `berth up` once to create $BERTH_HOME/api-token"
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # plain HTTP (the local API) needs no TLS context: loading the CA bundle costs 30-90 ms
        verify = base_url.startswith("https:")
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s, verify=verify)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "BerthApi":
        """The API of this machine's `berth up`: 127.0.0.1:$BERTH_API_PORT, token as `berth up` keeps it."""
        settings = Settings.from_env(env)
        hint = f"set {TOKEN_ENV}, or run `berth up` once to create {token_path(settings)}"
        return cls(api_url(settings), load_api_token(settings, env), token_hint=hint)

    def close(self) -> None:
        self._http.close()

    # ---- routes ---------------------------------------------------------------------------------

    def deploy(self, spec: dict[str, Any]) -> dict:
        return self._call("POST", "/v1/deployments", json=spec)

    def list(self, status: str | None = None) -> list[dict]:
        """Every deployment (optionally of one status): the API answers a page at a time, this
        follows `next_page_token` to the last page."""
        return [row for page in self.list_pages(status) for row in page["deployments"]]

    def list_pages(self, status: str | None = None, page_size: int = LIST_PAGE_SIZE) -> Iterator[dict]:
        params: dict[str, str | int] = {"page_size": page_size}
        if status:
            params["status"] = status
        while True:
            page = self._call("GET", "/v1/deployments", params=params)
            yield page
            if not page.get("next_page_token"):
                return
            params["page_token"] = page["next_page_token"]

    def get(self, name: str) -> dict:
        return self._call("GET", f"/v1/deployments/{name}")

    def stop(self, name: str) -> dict:
        return self._call("POST", f"/v1/deployments/{name}/stop")

    def retry(self, name: str, patch: dict[str, Any] | None = None) -> dict:
        return self._call("POST", f"/v1/deployments/{name}/retry", json=patch or None)

    def scale(self, name: str, replicas: int) -> dict:
        return self._call("POST", f"/v1/deployments/{name}/scale", json={"replicas": replicas})

    def logs(self, name: str, tail: int = 100, offset: int | None = None, instance: str | None = None) -> dict:
        params: dict[str, int | str] = {"tail": tail}
        if offset is not None:
            params["offset"] = offset
        if instance is not None:
            params["instance"] = instance
        return self._call("GET", f"/v1/deployments/{name}/logs", params=params)

    def create_key(self, name: str | None = None, deployments: "list[str] | None" = None) -> dict:
        body: dict[str, Any] = {}
        if name:
            body["name"] = name
        if deployments is not None:
            body["deployments"] = deployments
        return self._call("POST", "/v1/keys", json=body)

    def list_keys(self) -> "list[dict]":
        return self._call("GET", "/v1/keys")["keys"]

    def revoke_key(self, key_id: str) -> dict:
        from urllib.parse import quote

        return self._call("DELETE", f"/v1/keys/{quote(key_id, safe='')}")

    # ---- plumbing -------------------------------------------------------------------------------

    def nodes(self) -> dict:
        return self._call("GET", "/v1/nodes")

    def node(self, node_id: str) -> dict:
        return self._call("GET", f"/v1/nodes/{_segment(node_id)}")

    def drain(self, node_id: str) -> dict:
        return self._call("POST", f"/v1/nodes/{_segment(node_id)}/drain")

    def undrain(self, node_id: str) -> dict:
        return self._call("POST", f"/v1/nodes/{_segment(node_id)}/undrain")

    def _call(self, method: str, path: str, **kwargs) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise ApiUnreachable(f"cannot reach the berth API at {self.base_url}: is `berth up` running?") from None
        except httpx.HTTPError as error:
            raise ApiUnreachable(
                f"the berth API at {self.base_url} did not answer ({type(error).__name__}): is `berth up` running?"
            ) from None
        if response.is_success:
            return response.json()
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", f"the API answered {response.status_code}: {response.text[:200]}"
        if response.status_code == 401 and not self.token:
            message = f"no API token: {self.token_hint}"
        raise ApiRequestError(response.status_code, code, message)


def _segment(value: str) -> str:
    """One path segment, whatever the value holds ('/', '..', '?'): the API then refuses the value."""
    from urllib.parse import quote

    return quote(value, safe="")
