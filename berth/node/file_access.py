"""What the node's file server (berth.node.file_server) may hand to another node, and the sha256
of what it hands: the rules, apart from the HTTP.

A path is served only when, its links followed, it lies inside this node's model roots
(Settings.model_roots, the rule every local model path obeys: berth.domain.model_roots), is a
regular file (no device, no FIFO), is no file berth is still writing (`.part`, `.partial`,
`.lock`, `.incomplete`, hidden names), and is none of the node's secrets, wherever a root was
put: nothing of $BERTH_HOME but its models/ folder (the API token, the cluster token, the secret
key, the route table with its token), nothing in a `.ssh` folder, no file named like a key.
A folder is never served; a model folder (one that holds .safetensors or .gguf files and is not a
root itself) can be listed, every entry held to the same rules (a link in it that leads out of the
roots refuses the whole listing).

The sha256 of a file is computed once per version of it: cached by (resolved path, size, mtime),
concurrent askers share one computation, in a thread (a 4 GB file takes ~10 s of one core).
"""

import asyncio
import hashlib
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass

from berth.domain.model_roots import is_within, outside_roots
from berth.settings import Settings

# names berth writes while a file is not whole, and names of secrets: never served
UNFINISHED_SUFFIXES = (".part", ".partial", ".lock", ".incomplete", ".tmp")
SECRET_NAMES = frozenset({
    "api-token", "cluster-token", "secret-key", "authorized_keys", "known_hosts", "id_rsa", "id_dsa",
    "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk", ".netrc", ".git-credentials", "credentials",
})
MODEL_SUFFIXES = (".safetensors", ".gguf")
MAX_LISTING = 10_000  # a model folder holds tens of files (berth.node.model_files.MAX_FOLDER_ENTRIES)
HASH_CHUNK = 4 << 20
HASH_CACHE_SIZE = 512


class NotServed(Exception):
    """The path is not served; `status` is the HTTP answer (404 or 400), the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServedFile:
    path: str  # resolved
    size: int
    mtime_ns: int

    @property
    def etag(self) -> str:
        return f'"{self.size:x}-{self.mtime_ns:x}"'


@dataclass(frozen=True)
class FolderEntry:
    path: str  # relative to the folder, '/'-separated
    size: int


class FileAccess:
    """The rules for one node (its roots and home, read once)."""

    def __init__(self, settings: Settings):
        self.roots = [os.fspath(root) for root in settings.model_roots]
        self._resolved_roots = [os.path.realpath(root) for root in self.roots]
        self._home = os.path.realpath(settings.home)
        self._models = os.path.realpath(settings.models_dir)

    def _check_resolved(self, asked: str, resolved: str) -> None:
        refusal = outside_roots(resolved, self.roots)
        if refusal:
            raise NotServed(404, f"{asked!r} is not served: it lies outside this node's model roots")
        parts = resolved.split(os.sep)
        name = parts[-1]
        if (
            (is_within(resolved, self._home) and not is_within(resolved, self._models))
            or ".ssh" in parts
            or name in SECRET_NAMES
            or name.endswith((".pem", ".key"))
        ):
            raise NotServed(404, f"{asked!r} is not served: it is no model file")
        if name.startswith(".") or name.endswith(UNFINISHED_SUFFIXES):
            raise NotServed(404, f"{asked!r} is not served: a hidden or unfinished file")

    def resolve(self, asked: str) -> str:
        """The resolved path of `asked` when it may be served (a file, or a folder to list)."""
        if not asked.startswith("/") or "\0" in asked:
            raise NotServed(400, "give an absolute path")
        if ".." in asked.split("/"):
            raise NotServed(400, f"{asked!r}: a path with '..' is not served")
        try:
            resolved = os.path.realpath(asked)
        except (OSError, ValueError):
            raise NotServed(400, f"{asked!r} cannot be a path on this node") from None
        self._check_resolved(asked, resolved)
        return resolved

    def open_file(self, asked: str) -> tuple[ServedFile, int]:
        """(the file, an open descriptor) for a servable regular file; NotServed otherwise."""
        resolved = self.resolve(asked)
        try:
            fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise NotServed(404, f"{asked!r}: no such file on this node") from None
        except OSError as error:
            raise NotServed(404, f"{asked!r} cannot be read here ({error.strerror})") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            what = "a folder: list it with ?info" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise NotServed(404, f"{asked!r} is {what}")
        return ServedFile(resolved, info.st_size, info.st_mtime_ns), fd

    def stat_file(self, asked: str) -> ServedFile:
        served, fd = self.open_file(asked)
        os.close(fd)
        return served

    def is_folder(self, asked: str) -> bool:
        return os.path.isdir(self.resolve(asked))

    def list_folder(self, asked: str) -> list[FolderEntry]:
        """The files of a model folder, each held to the rules; NotServed for anything else."""
        resolved = self.resolve(asked)
        if not os.path.isdir(resolved):
            raise NotServed(404, f"{asked!r}: no such folder on this node")
        if resolved in self._resolved_roots:
            raise NotServed(404, f"{asked!r} is a model root, not a model folder: name the model's own folder")
        try:
            top = os.listdir(resolved)
        except OSError as error:
            raise NotServed(404, f"{asked!r} cannot be read here ({error.strerror})") from None
        if not any(name.endswith(MODEL_SUFFIXES) for name in top):
            raise NotServed(404, f"{asked!r} is no model folder (no .safetensors or .gguf file in it)")
        entries: list[FolderEntry] = []
        for current, folders, files in os.walk(resolved):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or name.endswith(UNFINISHED_SUFFIXES):
                    continue
                full = os.path.join(current, name)
                relative = os.path.relpath(full, resolved).replace(os.sep, "/")
                try:
                    target = os.path.realpath(full)
                    self._check_resolved(f"{asked}/{relative}", target)
                    info = os.stat(target)
                except NotServed:
                    raise NotServed(404, f"{asked!r} is not served: {relative!r} in it leads outside what this "
                                         "node serves") from None
                except OSError:
                    continue  # a dangling link: nothing to copy
                if not stat.S_ISREG(info.st_mode):
                    continue
                entries.append(FolderEntry(relative, info.st_size))
                if len(entries) > MAX_LISTING:
                    raise NotServed(404, f"{asked!r} holds more than {MAX_LISTING} files: no model folder")
            for folder in list(folders):  # links to folders are not followed (an engine would: refuse)
                if os.path.islink(os.path.join(current, folder)):
                    raise NotServed(404, f"{asked!r} is not served: it holds a link to a folder ({folder!r})")
        return entries


class Sha256Cache:
    """sha256 per (resolved path, size, mtime_ns): one computation per version of a file."""

    def __init__(self, size: int = HASH_CACHE_SIZE):
        self._done: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._running: dict[tuple[str, int, int], asyncio.Future] = {}
        self._size = size
        self.computed = 0  # how many files were hashed (tests, logs)

    async def sha256(self, served: ServedFile) -> str:
        key = (served.path, served.size, served.mtime_ns)
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(asyncio.to_thread(_hash_file, served))
            self._running[key] = running
            running.add_done_callback(lambda done, key=key: self._finished(key, done))
        return await asyncio.shield(running)

    def _finished(self, key: tuple[str, int, int], done: asyncio.Future) -> None:
        self._running.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return
        digest = done.result()
        self.computed += 1
        self._done[key] = digest
        while len(self._done) > self._size:
            self._done.popitem(last=False)

    def known(self, served: ServedFile) -> str | None:
        return self._done.get((served.path, served.size, served.mtime_ns))


def _hash_file(served: ServedFile) -> str:
    """The file's sha256; NotServed (409) when it is no longer the version `served` names."""
    digest = hashlib.sha256()
    with open(served.path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
        info = os.fstat(handle.fileno())
    if (info.st_size, info.st_mtime_ns) != (served.size, served.mtime_ns):
        raise NotServed(409, f"{served.path!r} changed while it was read: ask again")
    return digest.hexdigest()
