"""What keeps the control plane's cost flat: model facts read once per version of the files, one
probe HTTP client per event loop, a start-up check that needs no HTTP client at all, and the
worker's own announcement that it polls. Behaviour only: nothing here depends on timing."""

import http.server
import os
import threading

import pytest

from berth.node import model_facts_cache
from berth.node.model_facts_cache import cached_model_facts, clear_model_facts_cache
from berth.node.probe_client import probe_client
from berth.common.http_check import answers_ok
from berth.settings import Settings
from berth.testing.harness import free_port
from berth.testing.tiny_gguf import write_tiny_gguf
from berth.worker.worker_ready import announce_ready, withdraw_ready, worker_ready


@pytest.fixture
def counted_reads(monkeypatch):
    clear_model_facts_cache()
    reads = []
    real = model_facts_cache.read_model_facts

    def counting(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(model_facts_cache, "read_model_facts", counting)
    yield reads
    clear_model_facts_cache()


def test_model_facts_are_read_once_while_the_files_stay_the_same(tmp_path, counted_reads):
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    first = cached_model_facts(model)
    assert cached_model_facts(model) == first and cached_model_facts(str(model)) == first
    assert len(counted_reads) == 1


def test_model_facts_are_read_again_when_the_files_change(tmp_path, counted_reads):
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    cached_model_facts(model)
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    cached_model_facts(model)
    (tmp_path / "config.json").write_text("{}")  # something new beside it
    cached_model_facts(model)
    assert len(counted_reads) == 3


def test_unreadable_model_facts_are_not_remembered(tmp_path, counted_reads):
    from berth.models.facts import ModelFilesUnreadable

    for _ in range(2):
        with pytest.raises(ModelFilesUnreadable):
            cached_model_facts(tmp_path / "missing.gguf")
    assert len(counted_reads) == 2


def test_probes_share_one_client_per_set_of_headers():
    plain = probe_client()
    assert probe_client() is plain and probe_client({}) is plain
    with_token = probe_client({"Authorization": "Bearer t"})
    assert with_token is not plain and probe_client({"Authorization": "Bearer t"}) is with_token
    assert dict(with_token.headers) == {"Authorization": "Bearer t"} and not plain.headers


def test_answers_ok_is_true_only_for_a_200():
    codes = {"/ok": 200, "/loading": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(codes.get(self.path, 404))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert answers_ok(f"{base}/ok")
        assert not answers_ok(f"{base}/loading") and not answers_ok(f"{base}/nothing")
    finally:
        server.shutdown()
        server.server_close()
    assert not answers_ok(f"http://127.0.0.1:{free_port()}/ok")  # nothing listens


def test_the_worker_is_ready_only_once_it_announced_itself(tmp_path):
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path)})
    assert not worker_ready(settings, os.getpid())
    announce_ready(settings)
    assert worker_ready(settings, os.getpid())
    assert not worker_ready(settings, os.getpid() + 1), "an earlier worker's file does not count"
    assert not worker_ready(settings, None)
    withdraw_ready(settings)
    assert not worker_ready(settings, os.getpid())
