"""Write a file so that readers see the old content or the new, never half of it."""

import os
import secrets
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str, tmp_dir: Path | None = None) -> None:
    """Temp file in the same folder (or in `tmp_dir`, on the same file system), then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_secret_once(path: Path) -> str:
    """A random secret in `path` (mode 0600), made only if the file is not there yet; its content
    either way. The file appears at once with its content (written aside, then hard-linked into
    place), so a concurrent reader never sees it empty, and two creators agree on one secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        aside.unlink(missing_ok=True)
    return path.read_text()
