"""The manifest of a model berth fetched onto this node: which files, how big, which sha256.

One JSON file per fetched model under `$BERTH_HOME/models/manifests/`. It is written before the
download starts (complete=False) and marked complete once every file is whole, so a later deploy
or restart can tell the three cases apart without any network:

    present  complete, every file there with its size        -> use it
    partial  not complete yet (a download was interrupted)   -> fetch again, resuming
    gone     complete, but files are missing or cut short    -> MUST_REDOWNLOAD (the user deleted
             them), unless this deploy may fetch them again
"""

import hashlib
import os
import re
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, Field


class ManifestFile(BaseModel):
    path: str  # absolute, on this node
    size: int | None = None
    sha256: str | None = None


class ModelManifest(BaseModel):
    source: str  # the reference as the user wrote it (a URL, hf:org/repo...)
    format: str  # gguf / safetensors
    entry: str  # what the engine is given: the model file, or the folder
    files: list[ManifestFile] = Field(default_factory=list)
    commit: str | None = None  # hub: the commit the files come from
    choice: str | None = None  # hub: why these files (the GGUF choice rule)
    complete: bool = False
    fetched_at: datetime | None = None


class CacheState(str, Enum):
    ABSENT = "absent"
    PARTIAL = "partial"
    PRESENT = "present"
    GONE = "gone"


def manifests_dir(models_dir: Path) -> Path:
    return models_dir / "manifests"


def manifest_path(models_dir: Path, key: str) -> Path:
    """`key` says what was fetched (the reference, and the format when a repo offers several)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", key)[:80].strip("-")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return manifests_dir(models_dir) / f"{slug}-{digest}.json"


def load_manifest(path: Path) -> ModelManifest | None:
    try:
        return ModelManifest.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or unreadable: treated as never fetched


def save_manifest(path: Path, manifest: ModelManifest) -> None:
    """Written whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(manifest.model_dump_json(indent=2))
    os.replace(temporary, path)


def mark_complete(path: Path, manifest: ModelManifest) -> ModelManifest:
    done = manifest.model_copy(update={"complete": True, "fetched_at": datetime.now(timezone.utc)})
    save_manifest(path, done)
    return done


def missing_files(manifest: ModelManifest) -> list[str]:
    """The manifest's files that are not on disk whole (absent, or not the recorded size)."""
    missing = []
    for recorded in manifest.files:
        try:
            size = os.stat(recorded.path).st_size
        except OSError:
            missing.append(recorded.path)
            continue
        if recorded.size is not None and size != recorded.size:
            missing.append(recorded.path)
    return missing


def cache_state(manifest: ModelManifest | None) -> CacheState:
    if manifest is None:
        return CacheState.ABSENT
    if not manifest.complete:
        return CacheState.PARTIAL
    return CacheState.GONE if missing_files(manifest) else CacheState.PRESENT
