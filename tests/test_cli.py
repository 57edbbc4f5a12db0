"""The `berth` CLI as a user runs it (a subprocess with the stack's environment), against the real stack."""

import io
import subprocess
import sys
import time
from typing import get_args

import pytest

from berth.api.cli import ENGINES, build_parser, model_reference, name_from_model
from berth.api.cli_output import failure_text, follow, last_transition_key, printable, progress_text, state_text, table
from berth.domain.spec import EngineName
from berth.testing.harness import RunningStack, free_port


def start(stack, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`berth ARGS...` as a user runs it, with the stack's environment (plus `env`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "berth.api.cli", *args],
        env={**stack.env, **(env or {})} if stack else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(process: subprocess.Popen, timeout_s: float = 120) -> subprocess.CompletedProcess:
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def berth(stack, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return finish(start(stack, *args, env=env))


def wait_listed(api, name: str, status: str, timeout_s: float = 10) -> list[dict]:
    """The API's list once it shows `name` in `status` (visibility trails by about a second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = api.get("/v1/deployments").json()["deployments"]
        if any(r["name"] == name and r["status"] == status for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def stop(api, name: str) -> None:
    api.post(f"/v1/deployments/{name}/stop")
    deadline = time.monotonic() + 30
    while api.get(f"/v1/deployments/{name}").json()["status"] != "STOPPED":
        assert time.monotonic() < deadline
        time.sleep(0.05)


async def test_deploy_wait_succeeds_and_ls_status_logs_retry_stop_agree_with_the_api(stack, api, tiny_gguf, name):
    deployed = berth(stack, "deploy", str(tiny_gguf), "--name", name, "--wait")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    lines = deployed.stdout.splitlines()
    for status in ("REQUESTED", "DEPLOYING", "INITIALIZING", "DEPLOYED"):
        assert any(f"  {status}" in line for line in lines), deployed.stdout  # each transition, as a line
    state = api.get(f"/v1/deployments/{name}").json()
    assert f"{name} is DEPLOYED: {state['endpoint']}" in deployed.stdout
    assert "\x1b" not in deployed.stdout, "no terminal control codes when stdout is not a terminal"

    status = berth(stack, "status", name)
    assert status.returncode == 0, status.stderr
    for fact in (state["status"], state["engine"], state["endpoint"], state["spec"]["model"], str(state["pid"])):
        assert fact in status.stdout, (fact, status.stdout)

    watched = berth(stack, "status", name, "--watch")
    assert watched.returncode == 0 and f"{name} is DEPLOYED" in watched.stdout

    rows = wait_listed(api, name, "DEPLOYED")
    ls = berth(stack, "ls")
    assert ls.returncode == 0, ls.stderr
    ours = next(line for line in ls.stdout.splitlines() if line.split()[0] == name)
    row = next(r for r in rows if r["name"] == name)
    assert ours.split() == [row["name"], row["status"], row["replicas"] or "-", row["engine"], row["model"]]
    assert row["replicas"] == "1/1"
    assert ls.stdout.splitlines()[0].split() == ["NAME", "STATUS", "READY", "ENGINE", "MODEL"]
    assert len(ls.stdout.splitlines()) == len(rows) + 1
    only_failed = berth(stack, "ls", "--status", "FAILED")
    assert name not in only_failed.stdout

    logs = berth(stack, "logs", name, "-n", "2")
    assert logs.returncode == 0 and logs.stdout.splitlines() == (
        api.get(f"/v1/deployments/{name}/logs", params={"tail": 2}).json()["lines"]
    )

    pid = state["pid"]
    retried = berth(stack, "retry", name, "--context-size", "256", "--wait")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    after = api.get(f"/v1/deployments/{name}").json()
    assert after["spec"]["context_size"] == 256 and after["pid"] != pid
    assert "rolling" in retried.stdout and "DEPLOYED with the new spec" in retried.stdout  # DEPLOYED: it rolls

    stopped = berth(stack, "stop", name, "--wait")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"{name} is STOPPED" in stopped.stdout
    assert api.get(f"/v1/deployments/{name}").json()["status"] == "STOPPED"


async def test_deploy_wait_fails_on_a_broken_model_with_code_guidance_and_log_lines(stack, api, garbage_gguf, name):
    failed = berth(stack, "deploy", str(garbage_gguf), "--name", name, "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    error = api.get(f"/v1/deployments/{name}").json()["error"]
    assert error["code"] == "MODEL_LOADING_FAILURE"
    assert f"{name} is FAILED: MODEL_LOADING_FAILURE" in failed.stdout
    assert error["message"] in failed.stdout
    assert error["guidance"] in failed.stdout
    assert error["log_lines"] and all(line in failed.stdout for line in error["log_lines"])

    status = berth(stack, "status", name)
    assert "MODEL_LOADING_FAILURE" in status.stdout and error["guidance"] in status.stdout
    watched = berth(stack, "status", name, "--watch")
    assert watched.returncode == 1 and "MODEL_LOADING_FAILURE" in watched.stdout
    logs = berth(stack, "logs", name)
    assert logs.returncode == 0 and "MODEL_LOADING_FAILURE" in logs.stderr  # issues named on stderr
    stop(api, name)


async def test_errors_are_one_clear_line(stack, tiny_gguf, name):
    cases = [
        (("status", "no-such-deployment"), {}, "no deployment named 'no-such-deployment'"),
        (("deploy", str(tiny_gguf), "--name", "Not_A_Label"), {}, "DNS label"),
        (("deploy", str(tiny_gguf), "--name", name, "--context-size", "-4"), {}, "context_size"),
        (("ls",), {"BERTH_API_TOKEN": "wrong"}, "wrong bearer token"),
        (("ls",), {"BERTH_API_PORT": str(free_port())}, "is `berth up` running?"),
    ]
    running = [(args, expected, start(stack, *args, env=env)) for args, env, expected in cases]
    for args, expected, process in running:
        result = finish(process)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("berth: ")


def test_every_command_has_help_with_an_example():
    commands = ["", *build_parser()._subparsers._group_actions[0].choices]  # "" = `berth --help`
    assert {"up", "deploy", "ls", "status", "logs", "stop", "retry", "scale"} <= set(commands)
    running = {command: start(None, *([command] if command else []), "--help") for command in commands}
    for command, process in running.items():
        result = finish(process)
        assert result.returncode == 0, (command, result.stderr)
        assert "example" in result.stdout, (command, result.stdout)


def test_model_names_local_paths_and_engine_choices(tmp_path, monkeypatch):
    assert name_from_model("/models/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf") == "qwen2-5-0-5b-instruct-q4-k-m"
    assert name_from_model("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF") == "qwen2-5-0-5b-instruct-gguf"
    assert name_from_model("https://host/x/tiny.gguf?download=1") == "tiny"
    assert name_from_model("___.gguf") == "model"
    assert len(name_from_model("a" * 100 + ".gguf")) == 63
    monkeypatch.chdir(tmp_path)
    assert model_reference("m/tiny.gguf") == str(tmp_path / "m" / "tiny.gguf")
    assert model_reference("https://host/tiny.gguf") == "https://host/tiny.gguf"
    assert ENGINES == get_args(EngineName)


@pytest.fixture
def fresh_stack(tmp_path, tiny_gguf):
    running = RunningStack(tmp_path / "fresh-home")
    yield running
    code, leftovers = running.stop_and_reap()
    assert code == 0, "".join(running.output)
    assert not leftovers, leftovers


def test_up_deploy_from_a_clean_home_serves_a_chat_completion(fresh_stack, tiny_gguf):
    assert not fresh_stack.home.exists()
    fresh_stack.start(["--deploy", str(tiny_gguf)])
    fresh_stack.wait_for_output("tiny is DEPLOYED")
    assert any("curl" in line and "/models/tiny/v1/chat/completions" in line for line in fresh_stack.output)
    response = fresh_stack.chat("tiny", max_tokens=4)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def _state(status: str, *transitions: str, **extra) -> dict:
    return {
        "name": "m",
        "status": status,
        "transitions": [{"at": f"2030-01-01T00:00:0{i}Z", "status": s, "detail": s.lower()} for i, s in enumerate(transitions)],
        **extra,
    }


def test_following_prints_each_transition_once_and_ends_on_the_first_new_outcome():
    before = _state("FAILED", "REQUESTED", "FAILED")
    answers = iter([
        before,  # the retry signal is not handled yet: the old FAILED must not end a `retry --wait`
        _state("DEPLOYING", "REQUESTED", "FAILED", "DEPLOYING"),
        _state("DEPLOYED", "REQUESTED", "FAILED", "DEPLOYING", "INITIALIZING", "DEPLOYED", endpoint="http://g/m/v1"),
    ])
    out = io.StringIO()
    code, state = follow(lambda: next(answers), out, seen=last_transition_key(before), require_new=True, poll_s=0)
    assert code == 0 and state["status"] == "DEPLOYED"
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["DEPLOYING", "INITIALIZING", "DEPLOYED"]

    error = {"code": "CONTAINER_EXITED", "message": "it died", "guidance": "look", "log_lines": ["boom"]}
    text = failure_text(_state("ERROR", "ERROR", error=error, attempts=2, next_retry_at="2030-01-01T00:00:09Z"))
    assert text.splitlines()[0] == "m is ERROR: CONTAINER_EXITED"
    assert "it died" in text and "what to do: look" in text and "| boom" in text
    assert "retries by itself" in text and "attempt 2" in text


def test_a_download_is_shown_as_a_bar_and_piped_once_per_tenth():
    download = {"source": "hf:org/r", "file": "m.gguf", "bytes_done": 105_000_000, "bytes_total": 250_000_000,
                "files_done": 0, "files_total": 2, "resumed_from": 40_000_000}
    text = progress_text(download)
    assert text.startswith("[##########..............]  42.0%")
    assert "105.0 MB of 250.0 MB" in text and "m.gguf" in text and "0/2 files" in text and "resumed at 40.0 MB" in text
    assert progress_text({"bytes_done": 5_000_000}).startswith("[size unknown]  5.0 MB")

    def fetching(done: int) -> dict:
        state = _state("DEPLOYING", "DEPLOYING")
        state["download"] = {**download, "bytes_done": done}
        return state

    answers = iter([fetching(d) for d in (1, 2, 30_000_000, 31_000_000, 240_000_000)] + [_state("DEPLOYED", "DEPLOYED")])
    out = io.StringIO()
    code, _ = follow(lambda: next(answers), out, poll_s=0)
    bars = [line for line in out.getvalue().splitlines() if "downloading" in line]
    assert code == 0 and [line.split("]")[1].split("%")[0].strip() for line in bars] == ["0.0", "12.0", "96.0"]


def test_terminal_controls_in_a_deployment_are_shown_never_obeyed():
    """A model string or a message can come straight through Temporal: an escape sequence in it must
    not recolour, retitle or reorder the user's terminal when `berth ls` / `status` prints it."""
    hostile = "m\x1b]0;owned\x07\x1b[2J\u202egguf.exe"
    listed = table([["demo", "FAILED", hostile]], header=["NAME", "STATUS", "MODEL"])
    state = {
        "name": "demo", "status": "FAILED", "spec": {"model": hostile},
        "error": {"code": "RUNTIME_ERROR", "message": hostile, "guidance": "g", "log_lines": [hostile]},
        "transitions": [{"at": None, "status": "FAILED", "detail": hostile}],
    }
    for text in (listed, state_text(state), failure_text(state)):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "\\x1b]0;owned\\x07" in text and "\\u202e" in text
    assert printable("line one\n\tline two") == "line one\n\tline two"  # layout is kept
