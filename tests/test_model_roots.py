"""Model roots: a local model path is read only inside the folders the node allows
(berth.domain.model_roots, BERTH_MODEL_ROOTS in berth.settings), after its links are followed; the
node refuses one outside before anything reads it (MODEL_LOADING_FAILURE); a model folder's links
must stay inside too; engine logs are private (0600 in a 0700 folder)."""

import os
import stat
import sys
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from berth.domain.model_roots import MODEL_ROOTS_ENV, is_within, outside_roots
from berth.engines.base import LaunchCommand
from berth.node import process_runtime
from berth.node.engine_choice import choose_engine
from berth.node.logs import open_log
from berth.node.model_files import check_local_model
from berth.settings import DEFAULT_MODEL_ROOTS, Settings
from berth.testing.tiny_gguf import write_tiny_gguf


@pytest.fixture
def tree(tmp_path):
    """tmp/root (the one root) with a model, tmp/other outside it, and links of every kind."""
    root, other = tmp_path / "root", tmp_path / "other"
    (root / "sub").mkdir(parents=True)
    other.mkdir()
    (root / "sub" / "a.gguf").write_bytes(b"GGUF")
    (other / "b.gguf").write_bytes(b"GGUF")
    (tmp_path / "root-evil").mkdir()  # shares the root's name as a string prefix
    (tmp_path / "root-evil" / "c.gguf").write_bytes(b"GGUF")
    (root / "escape.gguf").symlink_to("/etc/passwd")
    (root / "escape-dir").symlink_to(other)
    (root / "alias.gguf").symlink_to(root / "sub" / "a.gguf")
    (root / "relative.gguf").symlink_to("sub/a.gguf")
    (tmp_path / "root-link").symlink_to(root)  # a root that is itself a link
    return tmp_path


# path (relative to tmp, or absolute), roots (relative to tmp), allowed
CASES = [
    ("root/sub/a.gguf", ["root"], True),  # inside
    ("root", ["root"], True),  # the root itself (a model folder)
    ("root/sub", ["root"], True),
    ("other/b.gguf", ["root"], False),  # outside
    ("/", ["root"], False),
    ("/etc/passwd", ["root"], False),
    ("root/../other/b.gguf", ["root"], False),  # '..' out of the root
    ("root/sub/../sub/a.gguf", ["root"], True),  # '..' that stays inside
    ("root/../../../../etc/passwd", ["root"], False),
    ("root-evil/c.gguf", ["root"], False),  # a prefix of the string is not the folder
    ("root/escape.gguf", ["root"], False),  # a link under the root pointing outside
    ("root/escape-dir/b.gguf", ["root"], False),  # a linked folder pointing outside
    ("root/alias.gguf", ["root"], True),  # a link that stays inside
    ("root/relative.gguf", ["root"], True),
    ("root-link/sub/a.gguf", ["root-link"], True),  # the root is a link: where it points counts
    ("root/sub/a.gguf", ["root-link"], True),
    ("other/b.gguf", ["root-link"], False),
    ("root/missing.gguf", ["root"], True),  # does not exist, inside: the node then says it is missing
    ("other/missing.gguf", ["root"], False),  # does not exist, outside: refused all the same
    ("nowhere/x.gguf", ["root"], False),
    ("other/b.gguf", ["root", "other"], True),  # any of several roots
    ("/etc/passwd", ["/"], True),  # an operator who allows everything
]


@pytest.mark.parametrize("path, roots, allowed", CASES)
def test_the_roots_table(tree, path, roots, allowed):
    full = path if path.startswith("/") else str(tree / path)
    refusal = outside_roots(full, [r if r.startswith("/") else tree / r for r in roots])
    assert (refusal is None) is allowed, refusal
    if not allowed:
        assert repr(full) in refusal and MODEL_ROOTS_ENV in refusal
        assert all(str(tree / r) in refusal for r in roots if not r.startswith("/")), "the roots are named"


def test_a_refusal_says_where_a_link_leads_and_a_bad_path_is_refused(tree):
    refusal = outside_roots(str(tree / "root" / "escape.gguf"), [tree / "root"])
    assert "resolves to '/etc/passwd'" in refusal
    assert "cannot be a path" in outside_roots("a\0b", [tree / "root"])


def test_a_relative_path_is_judged_from_the_current_folder(tree, monkeypatch):
    monkeypatch.chdir(tree / "root")
    assert outside_roots("sub/a.gguf", [tree / "root"]) is None
    monkeypatch.chdir(tree / "other")
    assert outside_roots("b.gguf", [tree / "root"]) is not None


@pytest.mark.parametrize("path, root, within", [
    ("/srv", "/srv", True), ("/srv/m", "/srv", True), ("/srvx", "/srv", False), ("/", "/srv", False),
    ("/anything", "/", True), ("/", "/", True),
])
def test_is_within(path, root, within):
    assert is_within(path, root) is within


# --- BERTH_MODEL_ROOTS -------------------------------------------------------------------------


def test_the_default_roots_and_berth_home_models(tmp_path):
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path / "home"), "HOME": "/home/ann"})
    roots = [str(root) for root in settings.model_roots]
    assert roots[-1] == str(settings.models_dir), "always allowed"
    assert {"/home/ann/models", "/home/ann/.cache/huggingface/hub", "/models", "/srv", "/mnt", "/data"} <= set(roots)
    assert len(roots) == len(DEFAULT_MODEL_ROOTS) + 1
    assert not {"/", "/home/ann", "/tmp", "/etc", "/root"} & set(roots), "never a whole home, /tmp or /"


@pytest.mark.parametrize("raw, expected", [
    (f"/srv/models{os.pathsep}/data/m", ["/srv/models", "/data/m"]),
    (f" /a/ {os.pathsep}{os.pathsep}/a", ["/a"]),  # spaces, empty entries, duplicates
    ("~/llm", ["/home/ann/llm"]),
    ("", []),  # set but empty: $BERTH_HOME/models alone
])
def test_berth_model_roots_replaces_the_defaults(tmp_path, raw, expected):
    settings = Settings.from_env({"BERTH_HOME": str(tmp_path), MODEL_ROOTS_ENV: raw, "HOME": "/home/ann"})
    assert [str(root) for root in settings.model_roots] == [*expected, str(tmp_path / "models")]


def test_a_relative_root_stops_berth_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="BERTH_MODEL_ROOTS: 'models' is not an absolute folder"):
        Settings.from_env({"BERTH_HOME": str(tmp_path), MODEL_ROOTS_ENV: "models"})


# --- on the node: before anything reads the path -------------------------------------------------


def failure(raised: pytest.ExceptionInfo) -> dict:
    return raised.value.details[0]


@pytest.fixture
def node(tree, monkeypatch):
    monkeypatch.setenv("BERTH_HOME", str(tree / "home"))
    monkeypatch.setenv(MODEL_ROOTS_ENV, str(tree / "root"))
    write_tiny_gguf(tree / "root" / "tiny.gguf")
    return tree


@pytest.mark.parametrize("model", ["/", "/etc/passwd", "other/b.gguf", "root/escape.gguf", "root/../other"])
async def test_the_node_refuses_a_path_outside_its_roots_before_choosing_an_engine(node, model):
    model = model if model.startswith("/") else str(node / model)
    with pytest.raises(ApplicationError) as raised:
        await choose_engine(model)
    assert failure(raised)["code"] == "MODEL_LOADING_FAILURE"
    assert "outside the folders this node reads models from" in failure(raised)["message"]
    assert str(node / "root") in failure(raised)["message"] and MODEL_ROOTS_ENV in failure(raised)["message"]
    with pytest.raises(ApplicationError):
        check_local_model(model)


async def test_a_path_inside_passes_and_a_mistyped_preset_name_keeps_its_message(node):
    assert check_local_model(str(node / "root" / "tiny.gguf")).format == "gguf"
    assert (await choose_engine(str(node / "root" / "tiny.gguf"))).engine == "llamacpp"
    with pytest.raises(ApplicationError) as raised:
        await choose_engine("gemma9-1b")
    assert "neither a model file on this node nor a berth preset" in failure(raised)["message"]


def test_a_model_folder_whose_link_leads_outside_is_refused(node):
    folder = node / "root" / "folder-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 16)
    (folder / "config.json").write_text("{}")
    assert check_local_model(str(folder)).format == "safetensors"
    (folder / "tokenizer.json").symlink_to("/etc/passwd")
    with pytest.raises(ApplicationError) as raised:
        check_local_model(str(folder))
    assert failure(raised)["code"] == "MODEL_LOADING_FAILURE"
    assert "tokenizer.json" in failure(raised)["message"] and "/etc/passwd" in failure(raised)["message"]


# --- engine logs: 0600 in a 0700 folder ----------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_log_is_private_also_when_it_existed_before(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    os.chmod(logs, 0o755)
    old = logs / "old.log"
    old.write_text("from an older berth\n")
    os.chmod(old, 0o644)
    with open_log(old) as log:
        log.write(b"appended\n")
    assert mode(old) == 0o600 and mode(logs) == 0o700
    assert old.read_text() == "from an older berth\nappended\n"
    with open_log(tmp_path / "fresh" / "new.log"):
        pass
    assert mode(tmp_path / "fresh" / "new.log") == 0o600 and mode(tmp_path / "fresh") == 0o700


def test_a_log_is_never_written_through_a_link(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "x.log").symlink_to(target)
    with pytest.raises(OSError):
        open_log(tmp_path / "x.log")
    assert target.read_text() == ""


def test_an_engine_log_holds_the_argv_never_the_env_values(tmp_path):
    log = tmp_path / "logs" / "d.log"
    secret = "hf_s3cr3t_value_0123456789"
    command = LaunchCommand([sys.executable, "-c", "print('engine up')", "--flag"], env={"HF_TOKEN": secret})
    started = process_runtime.start(command, "t-logs", log, tmp_path / "exit")
    process_runtime.wait_exit_status(tmp_path / "exit", started.wrapper_pid, timeout_s=10)
    text = log.read_text()
    assert "=== berth: starting" in text and "--flag" in text and "engine up" in text
    assert secret not in text
    assert mode(log) == 0o600 and mode(log.parent) == 0o700


def test_an_api_that_may_not_read_a_private_log_says_why(tmp_path, monkeypatch):
    """The API of docker-compose runs as another user than the worker that writes the logs: a 503
    that says why, not a 500. (Root reads any file, so the OS's refusal is played here.)"""
    from berth.api.facade import Unavailable, logs as facade_logs

    def refused(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(facade_logs, "open", refused, raising=False)
    with pytest.raises(Unavailable, match="private to the node's user"):
        facade_logs.read_log(str(tmp_path / "d.log"), 10, 0)
