"""The node that holds a `NODE:/path` model, as the copying node talks to it: through its gateway
(berth.node.file_server on the other side) with the cluster token; its answers turned into
classified failures (FetchFailed: retryable when the node did not answer)."""

from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
from temporalio import activity

from berth.common.cluster_token import CLUSTER_TOKEN_HEADER
from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODES_QUERY, ClusterView, NodeStatus
from berth.domain.model_format import format_of_name
from berth.domain.model_reference import NodeReference
from berth.models.fetch import FetchFailed
from berth.models.manifest import load_manifest, manifest_path

FILES_PATH = "/_berth/files"  # berth.node.file_server.FILES_PATH (not imported: the worker's side)
SHA256_HEADER = "X-Berth-Sha256"
# a source that hashes a big file answers HEAD late (a 4 GB file: ~10 s); the copy waits for it
HASH_TIMEOUT_S = 600.0
CLUSTER_QUERY_TIMEOUT = timedelta(seconds=5)


def source_client(gateway_url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway_url.rstrip("/"), headers={CLUSTER_TOKEN_HEADER: token}, trust_env=False,
        timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=False,
    )


async def gateway_of(node: str) -> str | None:
    """The gateway URL of `node` as the cluster knows it (its NodeFacts), when the workflow did not
    give one (PrepareFilesInput.source_gateway_url): None outside an activity, without a cluster
    workflow, or for a node that is not in it or DOWN."""
    if not activity.in_activity():
        return None
    try:
        view = await activity.client().get_workflow_handle(CLUSTER_WORKFLOW_ID).query(
            NODES_QUERY, result_type=ClusterView, rpc_timeout=CLUSTER_QUERY_TIMEOUT
        )
    except Exception:  # noqa: BLE001 - no cluster workflow, or no answer: the copy says the node is unknown
        return None
    for known in view.nodes:
        if known.facts.node_id == node and known.status is not NodeStatus.DOWN:
            return known.facts.gateway_url
    return None


async def node_model_format(
    reference: NodeReference, gateway_url: str | None, token: str | None, models_dir: Path
) -> str | None:
    """Another node's model's format before it is copied: from a copy made before, from its name,
    or (a folder) from the source's listing; None when none says."""
    manifest = load_manifest(manifest_path(models_dir, reference.display))
    if manifest is not None and manifest.complete:
        return manifest.format
    named = format_of_name(reference.file_name)
    gateway_url = gateway_url or (await gateway_of(reference.node) if named is None else None)
    if named is not None or not gateway_url or not token:
        return named
    async with source_client(gateway_url, token) as client:
        answer = await ask(client, reference, "GET", file_url(reference.path) + "?info")
    try:
        names = [str(f["path"]) for f in answer.json().get("files", [])]
    except (ValueError, LookupError, TypeError, AttributeError):
        return None
    if any(name.endswith(".safetensors") for name in names):
        return "safetensors"
    return "gguf" if any(name.endswith(".gguf") for name in names) else None


def file_url(remote: str) -> str:
    return FILES_PATH + quote(remote, safe="/")


async def announced_sha256(client: httpx.AsyncClient, reference: NodeReference, url: str) -> str:
    response = await ask(client, reference, "HEAD", url, timeout=HASH_TIMEOUT_S)
    sha256 = response.headers.get(SHA256_HEADER, "").strip().lower()
    if len(sha256) != 64:
        raise FetchFailed(f"node {reference.node!r} did not announce the sha256 of {url.removeprefix(FILES_PATH)}")
    return sha256


async def ask(
    client: httpx.AsyncClient, reference: NodeReference, method: str, url: str, timeout: float | None = None
) -> httpx.Response:
    try:
        response = await client.request(method, url, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
    except httpx.HTTPError as error:
        raise FetchFailed(
            f"node {reference.node!r} is unreachable at {client.base_url} ({error or type(error).__name__}): "
            f"is its gateway up, and can this node reach it? ({reference.display})",
            retryable=True,
        ) from None
    await raise_for_status(reference, response, url.removeprefix(FILES_PATH).split("?", 1)[0])
    return response


async def raise_for_status(reference: NodeReference, response: httpx.Response, remote: str) -> None:
    status = response.status_code
    if status < 400:
        return
    try:
        said = (await response.aread()).decode(errors="replace").strip()[:300]
    except (httpx.HTTPError, RuntimeError):
        said = ""
    if status in (401, 403):
        raise FetchFailed(
            f"node {reference.node!r} refused this node's cluster token ({status}: {said}): every node needs the "
            "same BERTH_CLUSTER_TOKEN (or $BERTH_HOME/cluster-token)"
        )
    if status == 404:
        raise FetchFailed(
            f"node {reference.node!r} does not serve {remote} ({said or 'not found'}): the path must name a file "
            "or model folder inside that node's model roots (BERTH_MODEL_ROOTS there)"
        )
    raise FetchFailed(
        f"node {reference.node!r} answered {status} for {remote} ({said}): its file server may be down "
        "(the node's worker); the copy is retried",
        retryable=status in (409, 429) or status >= 500,
    )
