"""Where a node reads local models from: a local model path must lie inside one of the folders the
node allows (BERTH_MODEL_ROOTS; berth.settings has the default and reads the variable), after its
links are followed. Without this rule `model` could make an engine read any file of the node
(`/etc/shadow` as a "model", `/` mounted into vLLM's container).

    /srv/models/qwen.gguf          inside /srv: allowed
    /srv/../etc/passwd             /etc/passwd: refused
    /srv/models/link.gguf -> /etc  resolved first: refused
    /models -> /mnt/disk/models    a root that is a link counts where it points

The API checks a spec with this when it runs beside the spec's node (`berth up`); the node checks
again before anything is read or launched (berth.node.model_source, berth.node.model_files).

Pure but for one thing: `realpath` follows the links (os.path.realpath; a test may pass another).
A path that does not exist is judged by what it would be: inside a root it passes here (the node
then says it is missing), outside it is refused, whether or not something is there.
"""

import os
from collections.abc import Callable, Sequence

MODEL_ROOTS_ENV = "BERTH_MODEL_ROOTS"


def is_within(path: str, root: str) -> bool:
    """`path` is `root` or lies below it; both absolute and normalised (no '..', no trailing '/')."""
    if root == os.sep:
        return path.startswith(os.sep)
    return path == root or path.startswith(root + os.sep)


def outside_roots(
    path: str, roots: Sequence[str | os.PathLike], realpath: Callable[[str], str] = os.path.realpath
) -> str | None:
    """None when `path` (its links followed; relative to the current folder) lies inside one of
    `roots` (their links followed too); else the refusal, naming the path, the roots and the
    variable that changes them."""
    shown = [os.fspath(root) for root in roots]
    try:
        resolved = realpath(path)
        resolved_roots = [realpath(root) for root in shown]
    except (ValueError, OSError) as error:  # a NUL in the path, a name too long
        return f"model path {path!r} cannot be a path on this node ({error})"
    if any(is_within(resolved, root) for root in resolved_roots):
        return None
    return roots_refusal(path, resolved, shown)


def roots_refusal(path: str, resolved: str, roots: Sequence[str]) -> str:
    where = f"model path {path!r}" + (f" (which resolves to {resolved!r})" if resolved != path else "")
    return (
        f"{where} is outside the folders this node reads models from: {', '.join(roots) or '(none)'}. "
        f"Put the model in one of them, or add its folder to {MODEL_ROOTS_ENV} on the node "
        f"('{os.pathsep}'-separated absolute folders; $BERTH_HOME/models is always allowed) and restart berth there"
    )
