"""Files on another node (`NODE:/path`): the source node's real file server behind its real gateway
(Traefik on 127.0.0.41, the route file the worker writes, the node's own cluster token), and the
copy into the target node's cache (prepare_files' path: berth.node.model_files), resumable,
sha256-checked, reused. What must never be served, and what each refusal answers."""

import asyncio
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from temporalio.exceptions import ApplicationError

from berth.domain.errors import ErrorCode, Failure
from berth.domain.model_reference import parse_model_reference
from berth.domain.pipeline import PrepareFilesInput
from berth.models.fetch import FetchFailed
from berth.models.manifest import load_manifest, manifest_path
from berth.node.engine_choice import format_for_selection
from berth.node.file_copy import copy_entry, copy_from_node, part_path
from berth.node.file_server import ROUTE_FILE, route_path
from berth.node.model_files import files_in_place
from berth.testing.file_node import FileNode
from berth.testing.harness import free_port
from berth.testing.tiny_gguf import write_tiny_gguf

SOURCE_ADDRESS = "127.0.0.41"
NOWHERE_ADDRESS = "127.0.0.42"  # no gateway listens there: an unreachable node


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Inside the session's model root (tests/conftest.py): the source node's home lies in its
    roots too, as on a machine where BERTH_MODEL_ROOTS was set too wide: its secrets still stay."""
    return tmp_path_factory.mktemp("node-files")


@pytest.fixture(scope="module")
def files(root) -> dict[str, Path]:
    models = root / "models"
    made = {"gguf": write_tiny_gguf(models / "tiny.gguf")}
    folder = models / "st"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(300_000))
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "sub").mkdir()
    (folder / "sub" / "tokenizer.json").write_text("{}")
    made["folder"] = folder
    (models / "escape.gguf").symlink_to("/etc/passwd")
    made["escape"] = models / "escape.gguf"
    bad = models / "bad-st"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"x" * 10)
    (bad / "tokenizer.json").symlink_to("/etc/hostname")
    made["bad_folder"] = bad
    (models / ".ssh").mkdir()
    (models / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    made["ssh_key"] = models / ".ssh" / "id_ed25519"
    (models / "keys").mkdir()
    (models / "keys" / "id_rsa").write_text("PRIVATE KEY")
    made["loose_key"] = models / "keys" / "id_rsa"
    return made


@pytest.fixture(scope="module")
def source(root, files):
    with FileNode(root / "home-a", "node-a", SOURCE_ADDRESS, str(root)) as node:
        (node.home / "api-token").write_text("the-api-token\n")
        (node.home / "secret-key").write_text("the-secret-key\n")
        yield node


@pytest.fixture
def target(tmp_path, monkeypatch, source):
    """The node that copies: its own home and id, the cluster's token."""
    home = tmp_path / "home-b"
    monkeypatch.setenv("BERTH_HOME", str(home))
    monkeypatch.setenv("BERTH_NODE_ID", "node-b")
    monkeypatch.setenv("BERTH_CLUSTER_TOKEN", source.token)
    return home


def node_path(path: Path, node: str = "node-a") -> str:
    return f"{node}:{path}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def prepare(model: str, source: FileNode | None, may_refetch: bool = True, gateway: str | None = None):
    return await files_in_place(PrepareFilesInput(
        deployment="d", model=model, may_refetch=may_refetch,
        source_gateway_url=gateway or (source.gateway_url if source else None),
    ))


def failure_of(refused: pytest.ExceptionInfo) -> Failure:
    assert isinstance(refused.value, ApplicationError) and refused.value.non_retryable
    return Failure.model_validate(refused.value.details[0])


# ---- the source side: what the gateway lets through ------------------------------------------------


def test_the_route_file_requires_the_token_in_its_rule(source):
    path = route_path(source.settings)
    assert path.name == ROUTE_FILE == "_berth-files.yml" and path.parent == source.settings.routes_dir
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, "it holds the token"
    routers = yaml.safe_load(path.read_text())["http"]["routers"]
    assert routers["_berth-files"]["rule"] == (
        f"PathPrefix(`/_berth/files/`) && Header(`X-Berth-Cluster-Token`, `{source.token}`)"
    )
    assert routers["_berth-files-denied"]["middlewares"] == ["_berth-files-denied"], "no token: no path reaches it"


def test_head_answers_size_and_sha256_hashed_once_per_version(source, files):
    model = files["gguf"]
    before = source.server.hashes.computed
    for _ in range(3):
        head = httpx.head(source.url(str(model)), headers=source.headers())
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == model.stat().st_size
        assert head.headers["x-berth-sha256"] == sha256(model)
    assert source.server.hashes.computed - before <= 1, "hashed once, then answered from the cache"


def test_a_range_request_gets_the_rest_only(source, files):
    model, data = files["gguf"], files["gguf"].read_bytes()
    rest = httpx.get(source.url(str(model)), headers={**source.headers(), "Range": "bytes=1000-"})
    assert rest.status_code == 206 and rest.content == data[1000:]
    assert rest.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    past = httpx.get(source.url(str(model)), headers={**source.headers(), "Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    stale = httpx.get(source.url(str(model)), headers={**source.headers(), "Range": "bytes=10-", "If-Range": '"x"'})
    assert stale.status_code == 200 and stale.content == data, "another version: the whole file"


@pytest.mark.parametrize("token, status", [(None, 401), ("wrong-token", 403), ("", 403)])
def test_without_the_right_token_nothing_is_served(source, files, token, status):
    for direct in (False, True):  # through the gateway; straight to the server (its own check)
        base = f"http://127.0.0.1:{source.server.port}/_berth/files" if direct else f"{source.gateway_url}/_berth/files"
        for method in ("GET", "HEAD"):
            answer = httpx.request(method, base + str(files["gguf"]), headers=source.headers(token))
            assert answer.status_code == status, (direct, method, answer.text)
            assert b"GGUF" not in answer.content
    denied = [s for s in source.server.served if s.path == "/_berth/denied"]
    assert denied, "through the gateway, the request reached the server without its path"


@pytest.mark.parametrize("what, status", [
    ("/etc/passwd", 404),  # outside the roots
    ("escape", 404),  # a link under a root that leads out of it
    ("api-token", 404), ("cluster-token", 404), ("secret-key", 404),  # the node's secrets, inside a root
    ("routes", 404),  # the route table's folder (the token is in its files)
    ("ssh_key", 404), ("loose_key", 404),
    ("folder", 404),  # a folder is listed (?info), never served
    ("dotdot", None), ("dotdot-encoded", None),  # sent raw: see raw_request
])
def test_nothing_outside_the_roots_and_no_secret_is_served(source, files, root, what, status):
    secrets = [b"the-api-token", b"the-secret-key", source.token.encode(), b"PRIVATE KEY", b"root:"]
    paths = {
        "/etc/passwd": "/etc/passwd",
        "escape": str(files["escape"]),
        "api-token": str(source.home / "api-token"),
        "cluster-token": str(source.home / "cluster-token"),
        "secret-key": str(source.home / "secret-key"),
        "routes": str(source.settings.routes_dir / ROUTE_FILE),
        "ssh_key": str(files["ssh_key"]),
        "loose_key": str(files["loose_key"]),
        "folder": str(files["folder"]),
        # '..' from a root to the api token: Traefik cleans the path, the server resolves it: not served
        "dotdot": f"{root}/models/../home-a/api-token",
        "dotdot-encoded": f"{root}/models/%2e%2e/home-a/api-token",
    }
    if status is None:  # '..' as the client wrote it (httpx would clean it): the gateway cleans
        # it (Traefik's sanitizePath) or the server refuses it (400); either way nothing is served
        for path in (paths[what], paths[what].replace("..", "%2e%2e"), paths[what].replace("..", "%2E%2E")):
            code, body = raw_request(SOURCE_ADDRESS, source.settings.gateway_port, f"/_berth/files{path}", source.token)
            assert code in (400, 404), (path, code, body)
            assert not any(secret in body for secret in secrets), body
            # straight to the server (no gateway cleaned it): '..' is refused before anything resolves
            code, body = raw_request("127.0.0.1", source.server.port, f"/_berth/files{path}", source.token)
            assert code == 400 and b"'..'" in body, (path, code, body)
        return
    url = f"{source.gateway_url}/_berth/files{paths[what]}"
    for method in ("GET", "HEAD"):
        answer = httpx.request(method, url, headers=source.headers())
        assert answer.status_code == status, (method, answer.status_code, answer.text)
        assert "x-berth-sha256" not in answer.headers
        assert not any(secret in answer.content for secret in secrets), answer.text


def raw_request(host: str, port: int, raw_path: str, token: str) -> tuple[int, bytes]:
    """A GET with its path exactly as given (no client normalises it)."""
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(f"GET {raw_path} HTTP/1.1\r\nHost: {host}\r\nX-Berth-Cluster-Token: {token}\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def test_a_model_folder_is_listed_and_nothing_else_is(source, files, root):
    listing = httpx.get(source.url(str(files["folder"])) + "?info", headers=source.headers())
    assert listing.status_code == 200
    assert listing.json() == {"kind": "folder", "files": [
        {"path": "config.json", "size": (files["folder"] / "config.json").stat().st_size},
        {"path": "model.safetensors", "size": 300_000},
        {"path": "sub/tokenizer.json", "size": 2},
    ]}
    for folder, words in ((root, "model root"), (source.home, "no model file"), (root / "models" / "keys", "no model folder"),
                          (files["bad_folder"], "leads outside")):
        refused = httpx.get(source.url(str(folder)) + "?info", headers=source.headers())
        assert refused.status_code == 404 and words in refused.text, (folder, refused.text)


# ---- the target side: the copy -------------------------------------------------------------------


async def test_a_copy_lands_in_the_cache_checked_and_a_second_copies_nothing(source, files, target):
    model = files["gguf"]
    seen = []
    reference = parse_model_reference(node_path(model))
    models_dir = target / "models"
    copied = await copy_from_node(reference, source.gateway_url, source.token, models_dir, True, seen.append)
    entry = copy_entry(reference, models_dir)
    assert copied.path == str(entry) and entry.parent.parent == models_dir / "copies" / "node-a"
    assert entry.name == "tiny.gguf" and sha256(entry) == sha256(model) and copied.format == "gguf"
    assert not part_path(entry).exists()
    assert seen[0].bytes_done == 0 and seen[0].bytes_total == model.stat().st_size
    assert seen[-1].bytes_done == seen[-1].bytes_total and seen[-1].files_done == seen[-1].files_total == 1
    assert all(p.source == node_path(model) for p in seen)
    manifest = load_manifest(manifest_path(models_dir, node_path(model)))
    assert manifest.complete and manifest.files[0].sha256 == sha256(model)
    served = len(source.server.served)
    prepared = await prepare(node_path(model), source)  # prepare_files' path, a later instance
    assert prepared.path == str(entry) and prepared.format == "gguf"
    assert len(source.server.served) == served, "the second prepare asked the source nothing"


async def test_a_model_folder_is_copied_whole(source, files, target):
    prepared = await prepare(node_path(files["folder"]), source)
    copied = Path(prepared.path)
    assert prepared.format == "safetensors" and copied.name == "st"
    for name in ("model.safetensors", "config.json", "sub/tokenizer.json"):
        assert (copied / name).read_bytes() == (files["folder"] / name).read_bytes()


KILLED_COPY = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from berth.domain.model_reference import parse_model_reference
    from berth.node.file_copy import copy_from_node

    def die_mid_way(progress):
        if 0 < progress.bytes_done < progress.bytes_total:
            os.kill(os.getpid(), signal.SIGKILL)  # as a worker killed mid-copy

    asyncio.run(copy_from_node(parse_model_reference(sys.argv[1]), sys.argv[2], os.environ["BERTH_CLUSTER_TOKEN"],
                               Path(sys.argv[3]), True, die_mid_way))
""")


async def test_a_copy_killed_mid_way_resumes_with_a_range(source, files, target):
    model = files["gguf"]
    size = model.stat().st_size
    killed = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", KILLED_COPY, node_path(model), source.gateway_url, str(target / "models")],
        capture_output=True, timeout=60,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    entry = copy_entry(parse_model_reference(node_path(model)), target / "models")
    have = part_path(entry).stat().st_size
    assert 0 < have < size and not entry.exists()
    served_before = len(source.server.served)
    seen = []
    prepared = await copy_from_node(parse_model_reference(node_path(model)), source.gateway_url, source.token,
                                    target / "models", True, seen.append)
    assert sha256(Path(prepared.path)) == sha256(model)
    gets = [s for s in list(source.server.served)[served_before:] if s.method == "GET" and "?" not in s.path]
    assert [(g.range, g.status, g.offset, g.length, g.complete) for g in gets] == [
        (f"bytes={have}-", 206, have, size - have, True)
    ], "only the rest was sent"
    assert seen[0].resumed_from == have and seen[-1].bytes_done == size


async def test_a_sha256_mismatch_discards_the_copy(source, files, target, root):
    """The source's file changed under the same size and mtime (its announced sha256 is the old
    one): the copy does not match, is deleted, and the failure says so."""
    model = root / "models" / "changing.gguf"
    model.write_bytes(files["gguf"].read_bytes())
    httpx.head(source.url(str(model)), headers=source.headers())  # the source hashes it now
    before = model.stat()
    with open(model, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xfe")
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ApplicationError) as refused:
        await prepare(node_path(model), source)
    failure = failure_of(refused)
    assert failure.code is ErrorCode.MODEL_LOADING_FAILURE and "sha256 mismatch" in failure.message
    entry = copy_entry(parse_model_reference(node_path(model)), target / "models")
    assert not entry.exists() and not part_path(entry).exists()


@pytest.mark.parametrize("case, code, words", [
    ("wrong token", ErrorCode.MODEL_LOADING_FAILURE, "refused this node's cluster token (403"),
    ("unreachable", ErrorCode.TRANSIENT, "is unreachable"),
    ("outside its roots", ErrorCode.MODEL_LOADING_FAILURE, "does not serve /etc/passwd"),
    ("missing", ErrorCode.MODEL_LOADING_FAILURE, "no such file"),
    ("not in the cluster", ErrorCode.MODEL_LOADING_FAILURE, "not in the cluster's routing map"),
])
async def test_a_failed_copy_is_classified(source, files, target, monkeypatch, case, code, words):
    model, gateway = node_path(files["gguf"]), source.gateway_url
    if case == "wrong token":
        monkeypatch.setenv("BERTH_CLUSTER_TOKEN", "not-the-token")
    elif case == "unreachable":
        gateway = f"http://{NOWHERE_ADDRESS}:{free_port()}"
    elif case == "outside its roots":
        model = "node-a:/etc/passwd"
    elif case == "missing":
        model = node_path(files["gguf"].with_name("absent.gguf"))
    with pytest.raises(ApplicationError) as refused:
        await files_in_place(PrepareFilesInput(
            deployment="d", model=model, source_gateway_url=None if case == "not in the cluster" else gateway,
        ))
    failure = failure_of(refused)
    assert failure.code is code and words in failure.message, failure.message
    assert "not-the-token" not in failure.message and source.token not in failure.message


async def test_this_nodes_own_path_is_used_in_place(source, files, target, monkeypatch):
    monkeypatch.setenv("BERTH_NODE_ID", "node-a")
    prepared = await prepare(node_path(files["gguf"]), None)
    assert prepared.path == str(files["gguf"].resolve()), "not copied"
    with pytest.raises(ApplicationError) as refused:
        await prepare("node-a:/etc/passwd", None)
    assert "outside the folders this node reads models from" in failure_of(refused).message


async def test_a_copy_that_is_gone_is_must_redownload_unless_the_deploy_may_fetch(source, files, target):
    prepared = await prepare(node_path(files["gguf"]), source)
    Path(prepared.path).unlink()
    with pytest.raises(ApplicationError) as refused:
        await prepare(node_path(files["gguf"]), source, may_refetch=False)
    failure = failure_of(refused)
    assert failure.code is ErrorCode.MUST_REDOWNLOAD and failure.missing_files == [prepared.path]
    again = await prepare(node_path(files["gguf"]), source, may_refetch=True)
    assert sha256(Path(again.path)) == sha256(files["gguf"])


class LyingSource(BaseHTTPRequestHandler):
    """A source node that lies: its folder lists files outside the folder, its file is longer than
    it says. The copying node must write nothing outside its copy, and keep nothing it did not ask for."""

    listing: list[dict] = []

    def do_GET(self):
        if self.path.endswith("?info"):
            body = json.dumps({"kind": "folder", "files": self.listing}).encode()
        else:
            body = b"x" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("X-Berth-Sha256", "0" * 64)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("listed, words", [
    ([{"path": "../../../escaped.txt", "size": 10}], "not a path inside the folder"),
    ([{"path": "/etc/cron.d/x", "size": 10}], "not a path inside the folder"),
    ([{"path": "a/./b.safetensors", "size": 10}], "not a path inside the folder"),
    ([{"path": "model.safetensors", "size": 10}], "sent more than the 10 bytes"),
])
async def test_a_lying_source_writes_nothing_outside_the_copy(tmp_path, listed, words):
    LyingSource.listing = listed
    server = ThreadingHTTPServer(("127.0.0.45", 0), LyingSource)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(FetchFailed) as refused:
            await copy_from_node(parse_model_reference("liar:/srv/models/st"), f"http://127.0.0.45:{server.server_port}",
                                 "token", tmp_path / "models", True, lambda _: None)
    finally:
        server.shutdown()
        server.server_close()
    assert words in str(refused.value)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in (".lock",) and "manifests" not in p.parts]
    assert all((tmp_path / "models" / "copies" / "liar") in p.parents for p in written), written
    assert not any(p.name == "escaped.txt" for p in tmp_path.parent.rglob("escaped.txt"))


async def test_the_format_of_another_nodes_model_is_known_before_the_copy(source, files, target):
    """The engine is chosen before any byte is copied: from the name, or from the folder's listing."""
    assert await format_for_selection(node_path(files["gguf"]), "auto", None) == "gguf"
    assert await format_for_selection(node_path(files["folder"]), "auto", source.gateway_url) == "safetensors"
    assert not (target / "models" / "copies").exists(), "nothing copied to learn it"
    with pytest.raises(ApplicationError) as refused:
        await format_for_selection("node-a:/etc/passwd-folder", "auto", source.gateway_url)
    assert failure_of(refused).code is ErrorCode.MODEL_LOADING_FAILURE
