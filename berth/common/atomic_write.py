"""Write a file so that readers see the old content or the new, never half of it."""

import os
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
