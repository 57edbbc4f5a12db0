"""The API's check of a spec's local model path against the node's model roots
(berth.domain.model_roots): a 400 before anything reaches Temporal.

The API knows a node's roots only when it runs beside that node, with its environment: `berth up`
says so by starting the API with BERTH_API_NODE=<the node's id>. Then a spec for that node (or for
no node in particular: one machine) is checked here. Elsewhere (the API in its own container, a
spec that names another node) the node alone checks, and the deployment fails with
MODEL_LOADING_FAILURE and the same message. A `NODE:/path` of the node beside the API is checked
the same way (it is that node's local path); another node's is that node's to refuse.

In a cluster of several nodes (docs/models.md, "Files on another node"), a plain absolute path is
qualified with the node beside the API (`<BERTH_API_NODE>:<path>`): the path names a file on the
machine where it was typed (the CLI makes it absolute there), and the node that runs an instance
copies it from there. One node (or no cluster workflow yet): the path stays plain. A spec pinned to
another node (`node`) keeps its plain path: it names a file on that node.
"""

import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from berth.api.facade.errors import BadRequest
from berth.domain.cluster import CLUSTER_WORKFLOW_ID, NODE_ID_PATTERN, NODES_QUERY, ClusterView
from berth.domain.model_reference import (
    BadModelReference,
    LocalReference,
    NodeReference,
    is_node_reference,
    is_remote,
    parse_model_reference,
)
from berth.domain.model_roots import outside_roots
from berth.domain.spec import DeploymentSpec
from berth.models.presets import looks_like_a_name, preset_for
from berth.settings import API_NODE_ENV, Settings

log = logging.getLogger(__name__)
CLUSTER_QUERY_TIMEOUT = timedelta(seconds=5)


def node_beside(environ: Mapping[str, str]) -> str | None:
    """The id of the node this API runs beside, sharing its files and environment (None: not known)."""
    return (environ.get(API_NODE_ENV) or "").strip() or None


def refuse_outside_roots(spec: DeploymentSpec, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
    """BadRequest naming the path, the roots and BERTH_MODEL_ROOTS when the spec's local model lies
    outside the roots of the node beside this API (links followed); nothing when it cannot tell."""
    node = node_beside(environ)
    if node is None:
        return
    if is_node_reference(spec.model):
        refusal = node_path_refusal(spec.model, node, settings.model_roots)
    elif spec.node in (None, node):
        refusal = local_model_refusal(spec.model, settings.model_roots)
    else:
        return
    if refusal:
        raise BadRequest(refusal)


def node_path_refusal(model: str, node: str, roots: Sequence[os.PathLike | str]) -> str | None:
    """Why `NODE:/path` names a path outside `roots` when NODE is `node` (None: another node's, or inside)."""
    try:
        reference = parse_model_reference(model)
    except BadModelReference as bad:
        return str(bad)
    if not isinstance(reference, NodeReference) or reference.node != node:
        return None
    return outside_roots(reference.path, roots)


def local_model_refusal(model: str, roots: Sequence[os.PathLike | str]) -> str | None:
    """Why `model`, read as a node reads it, is a local path outside `roots` (None: it is inside,
    or it is no local path: a URL, a hub reference, a preset, a mistyped preset name)."""
    if is_remote(model) or preset_for(model) is not None:
        return None
    path = os.path.expanduser(model)
    exists = os.path.exists(path)
    if not isinstance(parse_model_reference(model, exists=exists), LocalReference):
        return None  # an `org/repo` that is no path here: the hub
    if not exists and looks_like_a_name(model):
        return None  # a mistyped preset name: the node's message lists the presets
    return outside_roots(path, roots)


# ---- a plain path in a cluster: qualified with the API's node -------------------------------------


def is_plain_path(model: str) -> bool:
    """An absolute local path, as the CLI sends one (not a URL, hub repo, preset or NODE:/path)."""
    if not model.startswith("/") or is_remote(model) or is_node_reference(model) or preset_for(model) is not None:
        return False
    try:
        return isinstance(parse_model_reference(model, exists=True), LocalReference)
    except BadModelReference:
        return False


def qualified_model(model: str, api_node: str | None, node_count: int) -> str:
    """`model`, qualified with `api_node` when it is a plain absolute path and the cluster has more
    than one node; as it is otherwise."""
    if api_node is None or node_count <= 1 or not NODE_ID_PATTERN.match(api_node) or not is_plain_path(model):
        return model
    return f"{api_node}:{posixpath.normpath(model)}"


async def cluster_node_count(client: Client) -> int:
    """How many nodes the cluster workflow knows; 1 when there is none (one machine) or it does not
    answer (the path then stays plain: the node that runs it reads it locally, or says it is missing)."""
    try:
        view = await client.get_workflow_handle(CLUSTER_WORKFLOW_ID).query(
            NODES_QUERY, result_type=ClusterView, rpc_timeout=CLUSTER_QUERY_TIMEOUT
        )
    except RPCError as error:
        if error.status is not RPCStatusCode.NOT_FOUND:
            log.warning("the cluster's nodes query failed (%s): a plain model path stays plain", error)
        return 1
    except Exception as error:  # noqa: BLE001 - a query that fails (no worker): as one node
        log.warning("the cluster's nodes query failed (%s): a plain model path stays plain", error)
        return 1
    return len(view.nodes)


async def qualify_model(
    model: str, pinned: str | None, client: Client, environ: Mapping[str, str] = os.environ
) -> str:
    """The model reference to deploy: a plain path qualified with the API's node in a cluster of
    several nodes (not for a spec pinned to another node: its path is that node's)."""
    node = node_beside(environ)
    if node is None or pinned not in (None, node) or not is_plain_path(model):
        return model
    return qualified_model(model, node, await cluster_node_count(client))
