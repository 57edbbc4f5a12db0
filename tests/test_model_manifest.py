"""The manifest tells present / partial / gone apart without any network."""

from berth.models.manifest import (
    CacheState,
    ManifestFile,
    ModelManifest,
    cache_state,
    load_manifest,
    manifest_path,
    mark_complete,
    missing_files,
    save_manifest,
)


def manifest_for(tmp_path, complete: bool) -> ModelManifest:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 10)
    return ModelManifest(
        source="https://h/m.gguf", format="gguf", entry=str(model),
        files=[ManifestFile(path=str(model), size=10)], complete=complete,
    )


def test_states(tmp_path):
    assert cache_state(None) is CacheState.ABSENT
    assert cache_state(manifest_for(tmp_path, complete=False)) is CacheState.PARTIAL
    whole = manifest_for(tmp_path, complete=True)
    assert cache_state(whole) is CacheState.PRESENT
    (tmp_path / "m.gguf").write_bytes(b"x" * 4)  # cut short
    assert cache_state(whole) is CacheState.GONE and missing_files(whole) == [str(tmp_path / "m.gguf")]
    (tmp_path / "m.gguf").unlink()
    assert cache_state(whole) is CacheState.GONE


def test_saved_whole_and_read_back(tmp_path):
    path = manifest_path(tmp_path, "hf:org/repo|gguf")
    assert path.parent == tmp_path / "manifests" and path.name.startswith("hf-org-repo-gguf-")
    assert manifest_path(tmp_path, "hf:org/repo|safetensors") != path
    assert load_manifest(path) is None
    manifest = manifest_for(tmp_path, complete=False)
    save_manifest(path, manifest)
    assert load_manifest(path) == manifest
    done = mark_complete(path, manifest)
    assert load_manifest(path).complete and done.fetched_at is not None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    path.write_text("{not json")
    assert load_manifest(path) is None  # unreadable: as if never fetched
