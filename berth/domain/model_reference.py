"""What a deployment's `model` names: a local path, an http(s) URL, a Hugging Face repo, or a preset.

    /srv/models/qwen.gguf                      local: used in place, never copied
    gpu-box:/srv/models/qwen.gguf              on node `gpu-box`: copied from it (used in place there)
    https://host/qwen-q4_k_m.gguf              URL: downloaded (resumable), sha256 checked when given
    https://host/qwen.gguf#sha256=<64 hex>     ... the expected sha256 as a URL fragment
    hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF         Hugging Face repo: berth picks the file(s)
    hf:org/repo@v1.0:model-q8_0.gguf           ... at a revision, with the file named
    Qwen/Qwen2.5-0.5B-Instruct                 an `org/repo` that is not a path on the node
    gemma3-270m                                a berth preset (berth.models.presets)

Pure parsing: whether `org/repo` is a local path is decided by the caller (`exists`), on the node;
an `org/name` whose name ends in a model file extension (`models/q.gguf`) is always a path.
A node path is `NODE:/abs/path`: a node id (berth.domain.cluster.check_node_id), a colon, an
absolute path; `hf:org/repo` has no slash after the colon and a URL has two, so neither is one.
"""

import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from berth.domain.model_format import format_of_name

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# Hugging Face repo ids: `name` or `org/name`, letters, digits, '-', '_', '.'
REPO_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class BadModelReference(ValueError):
    """The reference cannot name a model; the message says how to write one."""


@dataclass(frozen=True)
class LocalReference:
    path: str


@dataclass(frozen=True)
class UrlReference:
    url: str  # without the #sha256= fragment
    file_name: str
    sha256: str | None = None

    @property
    def display(self) -> str:
        return self.url


@dataclass(frozen=True)
class HubReference:
    repo: str
    revision: str | None = None  # None: the repo's default branch
    file: str | None = None  # None: berth chooses (one GGUF, or the safetensors set)

    @property
    def display(self) -> str:
        text = f"hf:{self.repo}"
        if self.revision:
            text += f"@{self.revision}"
        if self.file:
            text += f":{self.file}"
        return text


@dataclass(frozen=True)
class NodeReference:
    """A file or folder under the model roots of node `node` (copied to the node that runs it)."""

    node: str
    path: str  # absolute, normalised (no '..', no trailing '/')

    @property
    def display(self) -> str:
        return f"{self.node}:{self.path}"

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.path).name


ModelReference = LocalReference | UrlReference | HubReference | NodeReference

# berth.domain.cluster.NODE_ID_PATTERN, spelled out: the CLI reads references without importing
# pydantic (tests/test_node_reference.py keeps the two equal)
NODE_ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
# what looks like a node path (and is then held to the rules): `word:/...`, the word no URL scheme
NODE_REFERENCE_START = re.compile(r"^([A-Za-z0-9_-]+):/")
# `hf:/x`, `http:/x`: a hub reference or a URL written wrong, never a node of that name
NOT_NODE_NAMES = frozenset({"hf", "http", "https", "file", "ftp"})


def is_remote(reference: str) -> bool:
    """The reference names something to fetch (a URL or an explicit hf: repo), never a local path."""
    return reference.startswith(("http://", "https://", "hf:"))


def is_node_reference(reference: str) -> bool:
    """`reference` is written as a node path (`NODE:/path`), well formed or not (parse it to know)."""
    return bool(NODE_REFERENCE_START.match(reference)) and not reference.startswith(("http://", "https://"))


def parse_model_reference(reference: str, exists: bool = False) -> ModelReference:
    """What `reference` names. `exists`: a file or folder of that name is on the node (a path wins
    over an `org/repo` that looks like a hub repo). Presets are resolved before this (berth.models.presets)."""
    if reference.startswith(("http://", "https://")):
        return parse_url(reference)
    if is_node_reference(reference):
        return parse_node_path(reference)
    if reference.startswith("hf:"):
        return parse_hub(reference.removeprefix("hf:"))
    if (
        not exists
        and REPO_PATTERN.match(reference)
        and format_of_name(reference) is None  # `models/q.gguf` is a (missing) file, not a repo
    ):
        return HubReference(repo=reference)
    return LocalReference(path=reference)


def parse_url(reference: str) -> UrlReference:
    url, _, fragment = reference.partition("#")
    parts = urlsplit(url)
    if not parts.netloc:
        raise BadModelReference(f"{reference!r} is not a URL with a host: write e.g. https://host/model.gguf")
    file_name = PurePosixPath(unquote(parts.path)).name
    if not file_name:
        raise BadModelReference(
            f"{reference!r} does not end with a file name: give the URL of the model file itself "
            "(e.g. https://host/path/model-q4_k_m.gguf)"
        )
    sha256 = None
    if fragment:
        key, _, value = fragment.partition("=")
        value = value.strip().lower()
        if key != "sha256" or not SHA256_PATTERN.match(value):
            raise BadModelReference(
                f"{reference!r}: the only fragment berth reads is #sha256=<64 hex digits>"
            )
        sha256 = value
    return UrlReference(url=url, file_name=file_name, sha256=sha256)


def parse_hub(text: str) -> HubReference:
    """`org/repo[@revision][:file]` (what follows `hf:`)."""
    repo_part, _, file = text.partition(":")
    repo, _, revision = repo_part.partition("@")
    if not REPO_PATTERN.match(repo) and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", repo):
        raise BadModelReference(
            f"'hf:{text}' does not name a Hugging Face repo: write hf:org/repo, hf:org/repo@revision "
            "or hf:org/repo:file.gguf"
        )
    if "@" in repo_part and not revision:
        raise BadModelReference(f"'hf:{text}': an empty revision after '@'")
    if ":" in text and not file:
        raise BadModelReference(f"'hf:{text}': an empty file name after ':'")
    if file and (file.startswith("/") or ".." in PurePosixPath(file).parts):
        raise BadModelReference(f"'hf:{text}': the file must be a path inside the repo")
    return HubReference(repo=repo, revision=revision or None, file=file or None)


def parse_node_path(reference: str) -> NodeReference:
    """`NODE:/abs/path`: the node id checked, the path absolute with no '..' and no NUL."""
    node, _, path = reference.partition(":")
    if node.lower() in NOT_NODE_NAMES:
        scheme = "hf:org/repo" if node.lower() == "hf" else f"{node.lower()}://host/path"
        raise BadModelReference(
            f"{reference[:200]!r} is neither a node path nor a {node.lower()} reference: write {scheme}, "
            "or NODE:/abs/path for a file on another node (no node may be named "
            f"{'/'.join(sorted(NOT_NODE_NAMES))})"
        )
    if not NODE_ID_PATTERN.match(node):
        raise BadModelReference(
            f"{reference[:200]!r}: {node!r} is not a node id (lowercase letters, digits, '-' and '_', "
            "1-63 characters): write NODE:/abs/path"
        )
    if path.startswith("//"):
        raise BadModelReference(
            f"{reference[:200]!r} looks like a URL with a scheme berth does not fetch: write https://host/path "
            "or NODE:/abs/path"
        )
    if "\0" in path or any(ord(c) < 32 for c in path):
        raise BadModelReference(f"{reference[:200]!r}: the path holds a control character")
    if ".." in PurePosixPath(path).parts:
        raise BadModelReference(
            f"{reference[:200]!r}: the path holds '..': write the file's own absolute path (NODE:/abs/path)"
        )
    normal = posixpath.normpath(path)
    if normal == "/":
        raise BadModelReference(f"{reference[:200]!r}: name a model file or folder on node {node!r}, not '/'")
    return NodeReference(node=node, path=normal)
