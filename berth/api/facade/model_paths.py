"""The API's check of a spec's local model path against the node's model roots
(berth.domain.model_roots): a 400 before anything reaches Temporal.

The API knows a node's roots only when it runs beside that node, with its environment: `berth up`
says so by starting the API with BERTH_API_NODE=<the node's id>. Then a spec for that node (or for
no node in particular: one machine) is checked here. Elsewhere (the API in its own container, a
spec that names another node) the node alone checks, and the deployment fails with
MODEL_LOADING_FAILURE and the same message.
"""

import os
from collections.abc import Mapping, Sequence

from berth.api.facade.errors import BadRequest
from berth.domain.model_reference import LocalReference, is_remote, parse_model_reference
from berth.domain.model_roots import outside_roots
from berth.domain.spec import DeploymentSpec
from berth.models.presets import looks_like_a_name, preset_for
from berth.settings import API_NODE_ENV, Settings


def node_beside(environ: Mapping[str, str]) -> str | None:
    """The id of the node this API runs beside, sharing its files and environment (None: not known)."""
    return (environ.get(API_NODE_ENV) or "").strip() or None


def refuse_outside_roots(spec: DeploymentSpec, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
    """BadRequest naming the path, the roots and BERTH_MODEL_ROOTS when the spec's local model lies
    outside the roots of the node beside this API (links followed); nothing when it cannot tell."""
    node = node_beside(environ)
    if node is None or spec.node not in (None, node):
        return
    refusal = local_model_refusal(spec.model, settings.model_roots)
    if refusal:
        raise BadRequest(refusal)


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
