"""The cache decisions of berth.models.fetch: present (no network), gone (MUST_REDOWNLOAD or fetch
again), offline, against the real huggingface_hub and a local fake hub."""

import hashlib
import random
from pathlib import Path

import pytest

from berth.domain.model_reference import HubReference, parse_url
from berth.models.fetch import FetchFailed, ModelGone, cached_format, fetch_model
from berth.testing.fake_hf_hub import FakeHub

GGUF = b"GGUF" + random.Random(1).randbytes(50_000)
WEIGHTS = random.Random(2).randbytes(40_000)


@pytest.fixture
def hub(monkeypatch):
    repos = {
        "org/m-GGUF": {"m-Q4_K_M.gguf": GGUF, "m-Q8_0.gguf": GGUF + b"8"},
        "org/m": {"model.safetensors": WEIGHTS, "config.json": b"{}", "tokenizer.json": b"{}", "pytorch_model.bin": b"x"},
    }
    with FakeHub(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


async def fetch(reference, models_dir: Path, want_format="gguf", may_refetch=True):
    progress = []
    fetched = await fetch_model(reference, want_format, models_dir, may_refetch, progress.append)
    return fetched, progress


async def test_a_present_model_is_used_without_asking_the_hub(hub, tmp_path):
    first, progress = await fetch(HubReference("org/m-GGUF"), tmp_path)
    assert Path(first.path).name == "m-Q4_K_M.gguf" and "Q4_K_M" in first.note
    assert progress and progress[-1].bytes_done == progress[-1].bytes_total == len(GGUF)
    hub.clear_requests()
    again, progress = await fetch(HubReference("org/m-GGUF"), tmp_path)
    assert again == first and not hub.requests and not progress
    assert cached_format(HubReference("org/m-GGUF"), tmp_path) == "gguf"


async def test_gone_files_are_must_redownload_unless_this_deploy_may_fetch_them(hub, tmp_path):
    first, _ = await fetch(HubReference("org/m-GGUF"), tmp_path)
    Path(first.path).unlink()
    with pytest.raises(ModelGone) as gone:
        await fetch(HubReference("org/m-GGUF"), tmp_path, may_refetch=False)
    assert gone.value.missing == [first.path] and not gone.value.offline
    again, _ = await fetch(HubReference("org/m-GGUF"), tmp_path, may_refetch=True)
    assert Path(again.path).read_bytes() == GGUF


async def test_offline_serves_the_cache_and_says_what_is_gone(hub, tmp_path, monkeypatch):
    first, _ = await fetch(HubReference("org/m-GGUF"), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.clear_requests()
    assert (await fetch(HubReference("org/m-GGUF"), tmp_path))[0] == first and not hub.requests
    Path(first.path).unlink()
    with pytest.raises(ModelGone) as gone:
        await fetch(HubReference("org/m-GGUF"), tmp_path, may_refetch=True)
    assert gone.value.offline and "HF_HUB_OFFLINE=1" in str(gone.value) and first.path in str(gone.value)
    with pytest.raises(FetchFailed) as never:  # never fetched: nothing to say is gone
        await fetch(HubReference("org/m"), tmp_path, want_format="safetensors")
    assert not never.value.retryable and "offline" in str(never.value).lower()
    assert not hub.requests


async def test_safetensors_for_vllm_and_mlx_bring_only_their_set(hub, tmp_path):
    fetched, _ = await fetch(HubReference("org/m"), tmp_path, want_format="safetensors")
    assert fetched.format == "safetensors"
    assert sorted(p.name for p in Path(fetched.path).iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


async def test_a_url_is_cached_under_its_own_key(hub, tmp_path):
    reference = parse_url(f"{hub.url}/org/m-GGUF/resolve/main/m-Q8_0.gguf")
    fetched, progress = await fetch(reference, tmp_path, want_format=None)
    assert Path(fetched.path).read_bytes() == GGUF + b"8" and fetched.format == "gguf"
    assert Path(fetched.path).is_relative_to(tmp_path / "url")
    hub.clear_requests()
    assert (await fetch(reference, tmp_path))[0] == fetched and not hub.requests
    Path(fetched.path).unlink()
    with pytest.raises(ModelGone):
        await fetch(reference, tmp_path, may_refetch=False)


async def test_unknown_repos_and_network_faults_are_told_apart(hub, tmp_path, monkeypatch):
    with pytest.raises(FetchFailed) as unknown:
        await fetch(HubReference("org/absent"), tmp_path)
    assert not unknown.value.retryable
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(FetchFailed) as unreachable:
        await fetch(HubReference("org/m-GGUF"), tmp_path)
    assert unreachable.value.retryable


async def test_a_download_that_cannot_fit_on_the_disk_is_refused_before_it_starts(hub, tmp_path, monkeypatch):
    free = type("Usage", (), {"free": 1000})()
    monkeypatch.setattr("berth.models.fetch.shutil.disk_usage", lambda _: free)
    monkeypatch.setattr("berth.models.url_download.shutil.disk_usage", lambda _: free)
    hub.clear_requests()
    with pytest.raises(FetchFailed, match=r"GB free: free some space") as hub_refused:
        await fetch(HubReference("org/m-GGUF"), tmp_path)
    assert not hub_refused.value.retryable and not hub.downloads("org/m-GGUF")
    with pytest.raises(FetchFailed, match=r"GB free: free some space") as url_refused:
        await fetch(parse_url(f"{hub.url}/org/m-GGUF/resolve/main/m-Q8_0.gguf"), tmp_path, want_format=None)
    assert not url_refused.value.retryable
    written = [p.name for p in (tmp_path / "url").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert not written


async def test_a_cached_url_is_checked_against_a_sha256_given_later(hub, tmp_path):
    plain = f"{hub.url}/org/m-GGUF/resolve/main/m-Q8_0.gguf"
    fetched, _ = await fetch(parse_url(plain), tmp_path, want_format=None)
    right = hashlib.sha256(GGUF + b"8").hexdigest()
    assert (await fetch(parse_url(f"{plain}#sha256={right}"), tmp_path))[0] == fetched
    with pytest.raises(FetchFailed, match=f"expected {'2' * 64}, got {right}"):
        await fetch(parse_url(f"{plain}#sha256={'2' * 64}"), tmp_path)
