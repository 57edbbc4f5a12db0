"""Listing and downloading Hugging Face repos: the real huggingface_hub against a fake hub (no mocks).

Each download runs berth's child process (berth.models.hub_fetch); payloads are a few KB."""

import asyncio
import hashlib
import os
import time
from pathlib import Path

import psutil
import pytest

from berth.domain.model_reference import HubReference, parse_model_reference
from berth.models.hub import HubError, HubFile, HubListing, download_hub_files, list_hub_repo
from berth.models.hub_selection import select_hub_files
from berth.testing.fake_hf_hub import FakeHub

GGUF_REPO = "org/tiny-GGUF"
ST_REPO = "org/tiny"
BIG_REPO = "org/big-GGUF"
BIG = bytes(range(256)) * 800  # 200 KiB: 2 s at the throttled rate


def payload(tag: str, size: int) -> bytes:
    return (tag.encode() * (size // len(tag) + 1))[:size]


REPOS = {
    GGUF_REPO: {
        "tiny-q2_k.gguf": payload("q2", 3000),
        "tiny-q4_k_m.gguf": payload("q4km", 5000),
        "tiny-q8_0.gguf": payload("q8", 9000),
        "mmproj-tiny-f16.gguf": payload("mm", 1000),
        "README.md": b"# tiny\n",
    },
    ST_REPO: {
        "model.safetensors": payload("st", 6000),
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b'{"chat_template": ""}',
        "generation_config.json": b'{"do_sample": true}',
        "pytorch_model.bin": payload("bin", 6000),
        "onnx/model.onnx": payload("onnx", 6000),
        "README.md": b"# tiny\n",
    },
    BIG_REPO: {"big-q4_k_m.gguf": BIG},
}
REVISIONS = {GGUF_REPO: {"v1.0": {"tiny-q4_k_m.gguf": payload("old-q4km", 4000), "tiny-v1-q8_0.gguf": b"v1"}}}


@pytest.fixture(scope="module")
def hub():
    with FakeHub(REPOS, revisions=REVISIONS) as fake:
        yield fake


@pytest.fixture(autouse=True)
def online(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    hub.clear_requests()


def cached_files(cache_dir: Path, repo: str) -> dict[str, bytes]:
    """What the cache's snapshots hold of `repo`: {path: bytes}, all commits together."""
    snapshots = cache_dir / ("models--" + repo.replace("/", "--")) / "snapshots"
    return {
        path.relative_to(snapshots).as_posix().split("/", 1)[1]: path.read_bytes()
        for path in snapshots.rglob("*") if path.is_file()
    }


def fetch_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "berth.models.hub_fetch" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


async def fetch(reference: str, cache_dir: Path, want_format: str | None = None):
    ref = parse_model_reference(reference)
    listing = await asyncio.to_thread(list_hub_repo, ref)
    selection = select_hub_files(listing, ref, want_format)
    seen = []
    snapshot = await download_hub_files(listing, [f.path for f in selection.files], cache_dir, seen.append)
    return listing, selection, snapshot, seen


async def test_the_q4_k_m_file_alone_is_downloaded(hub, tmp_path):
    listing, selection, snapshot, seen = await fetch(GGUF_REPO, tmp_path)
    assert listing.commit == hub.commit(GGUF_REPO)
    assert selection.entry == "tiny-q4_k_m.gguf"
    assert cached_files(tmp_path, GGUF_REPO) == {"tiny-q4_k_m.gguf": REPOS[GGUF_REPO]["tiny-q4_k_m.gguf"]}
    assert (snapshot / selection.entry).read_bytes() == REPOS[GGUF_REPO]["tiny-q4_k_m.gguf"]
    assert snapshot == tmp_path / "models--org--tiny-GGUF" / "snapshots" / listing.commit
    assert hub.downloads(GGUF_REPO) == ["tiny-q4_k_m.gguf"]
    assert [r.path for r in hub.requests_to("GET", "/api/models/.*")] == [f"/api/models/{GGUF_REPO}"]
    assert seen[-1].bytes_done == seen[-1].bytes_total == 5000 and seen[-1].files_done == seen[-1].files_total == 1
    assert all(p.bytes_total == 5000 for p in seen)
    assert [p.bytes_done for p in seen] == sorted(p.bytes_done for p in seen)
    assert seen[-1].source == f"hf:{GGUF_REPO}" and seen[-1].resumed_from == 0


async def test_huggingface_hub_finds_what_berth_downloaded(tmp_path):
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    listing, _, snapshot, _ = await fetch(GGUF_REPO, tmp_path)
    found = hf_hub_download(GGUF_REPO, "tiny-q4_k_m.gguf", revision=listing.commit, cache_dir=tmp_path)
    assert Path(found) == snapshot / "tiny-q4_k_m.gguf"
    assert try_to_load_from_cache(GGUF_REPO, "tiny-q4_k_m.gguf", cache_dir=tmp_path) == found  # via refs/main


async def test_a_named_file_at_a_revision(hub, tmp_path):
    listing, selection, snapshot, _ = await fetch(f"hf:{GGUF_REPO}@v1.0:tiny-v1-q8_0.gguf", tmp_path)
    assert listing.commit == hub.commit(GGUF_REPO, "v1.0") != hub.commit(GGUF_REPO)
    assert [f.path for f in selection.files] == ["tiny-v1-q8_0.gguf"]
    assert (snapshot / "tiny-v1-q8_0.gguf").read_bytes() == b"v1"
    assert cached_files(tmp_path, GGUF_REPO) == {"tiny-v1-q8_0.gguf": b"v1"}
    assert hub.requests_to("GET", "/api/models/org/tiny-GGUF/revision/v1.0")
    assert (tmp_path / "models--org--tiny-GGUF" / "refs" / "v1.0").read_text() == listing.commit


async def test_the_safetensors_set_alone_is_downloaded(hub, tmp_path):
    _, selection, snapshot, seen = await fetch(ST_REPO, tmp_path)
    wanted = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (selection.format, selection.entry) == ("safetensors", "")
    assert sorted(cached_files(tmp_path, ST_REPO)) == wanted
    assert sorted(hub.downloads(ST_REPO)) == wanted
    assert seen[-1].files_done == 5 and seen[-1].bytes_done == sum(len(REPOS[ST_REPO][p]) for p in wanted)


async def test_a_stopped_download_leaves_no_process_and_resumes_with_a_range_request(hub, tmp_path):
    listing = await asyncio.to_thread(list_hub_repo, HubReference(BIG_REPO))
    hub.throttle(BIG_REPO, "big-q4_k_m.gguf", bytes_per_s=100_000)
    started = asyncio.Event()

    def on_progress(progress):
        if progress.bytes_done >= 20_000:
            started.set()

    task = asyncio.create_task(
        download_hub_files(listing, ["big-q4_k_m.gguf"], tmp_path, on_progress, chunk_bytes=4096)
    )
    await asyncio.wait_for(started.wait(), 10)
    assert fetch_children()
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < 1
    assert not fetch_children()

    partial = list((tmp_path / "models--org--big-GGUF" / "blobs").glob("*.incomplete"))
    assert [p.name for p in partial] == [hashlib.sha256(BIG).hexdigest() + ".incomplete"]
    kept = partial[0].stat().st_size
    assert 0 < kept < len(BIG)
    assert cached_files(tmp_path, BIG_REPO) == {}

    hub.throttle(BIG_REPO, "big-q4_k_m.gguf", None)
    hub.clear_requests()
    seen = []
    snapshot = await download_hub_files(listing, ["big-q4_k_m.gguf"], tmp_path, seen.append, chunk_bytes=4096)
    assert [r.range for r in hub.requests_to("GET", "/org/big-GGUF/resolve/.*")] == [f"bytes={kept}-"]
    assert (snapshot / "big-q4_k_m.gguf").read_bytes() == BIG
    assert seen[0].resumed_from == kept and seen[-1].bytes_done == len(BIG)
    assert not list(partial[0].parent.glob("*.incomplete"))


async def test_a_connection_dropped_mid_file_is_resumed(hub, tmp_path):
    listing = await asyncio.to_thread(list_hub_repo, HubReference(BIG_REPO))
    hub.drop_connection(BIG_REPO, "big-q4_k_m.gguf", after_bytes=50_000)
    snapshot = await download_hub_files(listing, ["big-q4_k_m.gguf"], tmp_path, lambda p: None, chunk_bytes=4096)
    assert (snapshot / "big-q4_k_m.gguf").read_bytes() == BIG
    ranges = [r.range for r in hub.requests_to("GET", "/org/big-GGUF/resolve/.*")]
    assert ranges[0] is None and len(ranges) == 2 and ranges[1].startswith("bytes=")
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= 50_000


async def test_lfs_files_redirected_to_a_cdn_get_no_token(monkeypatch, tmp_path):
    files = {"m-q4_k_m.gguf": payload("cdn", 7000), "config.json": b'{"a": 1}'}
    with FakeHub({"org/cdn": files}, cdn_redirects=True) as cdn_hub:
        monkeypatch.setenv("HF_ENDPOINT", cdn_hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_berth_test_token")
        listing = await asyncio.to_thread(list_hub_repo, HubReference("org/cdn"))
        snapshot = await download_hub_files(listing, sorted(files), tmp_path, lambda p: None)
        assert {p: (snapshot / p).read_bytes() for p in files} == files
        to_hub = cdn_hub.requests_to("GET", "/api/models/.*") + cdn_hub.requests_to("HEAD", "/org/cdn/resolve/.*")
        assert {r.authorization for r in to_hub} == {"Bearer hf_berth_test_token"}
        to_cdn = cdn_hub.requests_to("GET", "/_cdn/.*")
        assert [r.path.rsplit("/", 1)[1] for r in to_cdn] == ["m-q4_k_m.gguf"]
        assert to_cdn[0].authorization is None


async def test_an_unknown_repo():
    with pytest.raises(HubError) as raised:
        await asyncio.to_thread(list_hub_repo, HubReference("org/no-such-model"))
    assert raised.value.kind == "not_found"
    assert "'org/no-such-model' was not found" in str(raised.value) and "HF_TOKEN" in str(raised.value)


async def test_an_unknown_revision():
    with pytest.raises(HubError) as raised:
        await asyncio.to_thread(list_hub_repo, HubReference(GGUF_REPO, revision="v9"))
    assert raised.value.kind == "revision_not_found" and "'v9'" in str(raised.value)


async def test_a_file_the_hub_does_not_have(hub, tmp_path):
    ref = HubReference(GGUF_REPO, file="tiny-q5_k_m.gguf")
    listing = await asyncio.to_thread(list_hub_repo, ref)
    with pytest.raises(HubError) as raised:
        select_hub_files(listing, ref, None)
    assert raised.value.kind == "file_not_found" and "tiny-q4_k_m.gguf" in str(raised.value)

    # a listing that promises a file the hub does not serve: the child's HEAD finds out
    stale = HubListing(GGUF_REPO, listing.commit, listing.files + (HubFile("gone.gguf", 10, None),))
    with pytest.raises(HubError) as raised:
        await download_hub_files(stale, ["gone.gguf"], tmp_path, lambda p: None)
    assert raised.value.kind == "file_not_found" and "'gone.gguf'" in str(raised.value)
    assert "Traceback" not in str(raised.value)
    assert not fetch_children()


async def test_an_unreachable_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(HubError) as raised:
        await asyncio.to_thread(list_hub_repo, HubReference(GGUF_REPO))
    assert raised.value.kind == "network" and "http://127.0.0.1:9" in str(raised.value)


async def test_offline_with_an_empty_cache(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError) as raised:
        await asyncio.to_thread(list_hub_repo, HubReference(GGUF_REPO), tmp_path)
    assert raised.value.kind == "offline" and "HF_HUB_OFFLINE" in str(raised.value)
    listing = HubListing(GGUF_REPO, hub.commit(GGUF_REPO), (HubFile("tiny-q4_k_m.gguf", 5000, None),))
    with pytest.raises(HubError) as raised:
        await download_hub_files(listing, ["tiny-q4_k_m.gguf"], tmp_path, lambda p: None)
    assert raised.value.kind == "offline"
    assert hub.requests == []


async def test_offline_with_the_model_cached(hub, monkeypatch, tmp_path):
    online_listing, selection, _, _ = await fetch(GGUF_REPO, tmp_path)
    hub.clear_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    listing = await asyncio.to_thread(list_hub_repo, HubReference(GGUF_REPO), tmp_path)
    assert listing.commit == online_listing.commit
    assert [f.path for f in listing.files] == ["tiny-q4_k_m.gguf"]
    again = select_hub_files(listing, HubReference(GGUF_REPO), None)
    seen = []
    snapshot = await download_hub_files(listing, [f.path for f in again.files], tmp_path, seen.append)
    assert (snapshot / again.entry).read_bytes() == REPOS[GGUF_REPO]["tiny-q4_k_m.gguf"]
    assert seen[-1].bytes_done == 5000 and hub.requests == []
    assert os.path.islink(snapshot / again.entry)
