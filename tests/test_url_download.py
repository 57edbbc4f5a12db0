"""URL downloads against a real local HTTP server: resume, checksum, errors, no half-visible file."""

import asyncio
import hashlib
import random

import pytest

from berth.domain.model_reference import parse_url
from berth.models.url_download import DownloadError, download_url, partial_path
from berth.testing.fake_hf_hub import FakeHub

DATA = random.Random(3).randbytes(300_000)


@pytest.fixture(scope="module")
def server():
    with FakeHub({"files/m": {"model.gguf": DATA, "other.gguf": DATA[:1000]}}) as hub:
        yield hub


def url(server, file: str = "model.gguf", sha256: str | None = None):
    text = f"{server.url}/files/m/resolve/main/{file}"
    return parse_url(f"{text}#sha256={sha256}" if sha256 else text)


async def test_a_download_reports_progress_and_lands_whole(server, tmp_path):
    seen = []
    done = await download_url(url(server, sha256=hashlib.sha256(DATA).hexdigest()), tmp_path / "m.gguf", seen.append)
    assert done.path.read_bytes() == DATA and done.size == len(DATA)
    assert seen[-1].bytes_done == seen[-1].bytes_total == len(DATA)
    assert not partial_path(done.path).exists()


async def test_a_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    target = tmp_path / "m.gguf"
    partial_path(target).write_bytes(DATA[:120_000])
    server.clear_requests()
    seen = []
    done = await download_url(url(server, sha256=hashlib.sha256(DATA).hexdigest()), target, seen.append)
    assert done.path.read_bytes() == DATA  # the whole file is checked, the old part included
    assert [r.range for r in server.requests if r.method == "GET"] == ["bytes=120000-"]
    assert seen[0].resumed_from == 120_000


async def test_a_cut_connection_keeps_the_partial_file_for_the_next_attempt(server, tmp_path):
    target = tmp_path / "m.gguf"
    server.drop_connection("files/m", "model.gguf", after_bytes=100_000)
    with pytest.raises(DownloadError) as cut:
        await download_url(url(server), target, lambda _: None)
    assert cut.value.kind == "network" and "resumes" in str(cut.value)
    assert not target.exists() and 0 < partial_path(target).stat().st_size < len(DATA)
    done = await download_url(url(server), target, lambda _: None)
    assert done.path.read_bytes() == DATA


async def test_a_cancelled_download_leaves_a_resumable_partial_file(server, tmp_path):
    target = tmp_path / "m.gguf"
    server.throttle("files/m", "model.gguf", 100_000)
    try:
        task = asyncio.ensure_future(download_url(url(server), target, lambda _: None))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        server.throttle("files/m", "model.gguf", None)
    assert not target.exists() and partial_path(target).stat().st_size > 0


async def test_a_wrong_checksum_names_both_hashes_and_deletes_the_file(server, tmp_path):
    target = tmp_path / "m.gguf"
    with pytest.raises(DownloadError) as wrong:
        await download_url(url(server, sha256="1" * 64), target, lambda _: None)
    assert wrong.value.kind == "checksum"
    assert "1" * 64 in str(wrong.value) and hashlib.sha256(DATA).hexdigest() in str(wrong.value)
    assert not target.exists() and not partial_path(target).exists()


async def test_a_missing_file_says_so(server, tmp_path):
    with pytest.raises(DownloadError) as missing:
        await download_url(url(server, "absent.gguf"), tmp_path / "a.gguf", lambda _: None)
    assert missing.value.kind == "not_found" and "404" in str(missing.value)


async def test_an_unreachable_host_is_a_network_error(tmp_path):
    with pytest.raises(DownloadError) as unreachable:
        await download_url(parse_url("http://127.0.0.1:9/m.gguf"), tmp_path / "m.gguf", lambda _: None)
    assert unreachable.value.kind == "network"


async def test_two_deployments_of_one_url_download_it_once(server, tmp_path):
    server.clear_requests()
    target = tmp_path / "m.gguf"
    first, second = await asyncio.gather(
        download_url(url(server), target, lambda _: None), download_url(url(server), target, lambda _: None)
    )
    assert first == second and first.path.read_bytes() == DATA
    assert len([r for r in server.requests if r.method == "GET"]) == 1
