"""Shared fixtures: one real berth stack (Temporal, Traefik, worker) for the integration tests."""

import itertools
import re
from pathlib import Path

import pytest

from berth.testing.harness import RunningStack
from berth.testing.tiny_gguf import write_garbage_gguf, write_tiny_gguf

_names = itertools.count(1)
RECONCILE_INTERVAL_S = 2
NODE_MEMORY_LIMIT = "640MiB"


@pytest.fixture(scope="session", autouse=True)
def model_roots(tmp_path_factory):
    """The tests write their models into pytest's temporary folders: the one model root of every
    node they start (berth.settings.MODEL_ROOTS_ENV; $BERTH_HOME/models is always one too). Set in
    this process, so that stacks (berth.testing.harness copies the environment) and activities run
    here see it alike."""
    root = str(tmp_path_factory.getbasetemp().resolve())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BERTH_MODEL_ROOTS", root)
        yield root


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_gguf(models_dir) -> Path:
    return write_tiny_gguf(models_dir / "tiny.gguf")


@pytest.fixture(scope="session")
def garbage_gguf(models_dir) -> Path:
    return write_garbage_gguf(models_dir / "garbage.gguf")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """`berth up` on free ports; at the end it must stop cleanly and leave no process behind."""
    home = tmp_path_factory.mktemp("berth-home")
    running = RunningStack(
        home,
        extra_env={
            "BERTH_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
            "BERTH_FAULT_INJECTION": "1",
            # the worker-crash tests kill the worker on purpose, 8 times in about a minute
            "BERTH_MAX_RESTARTS_PER_MINUTE": "30",
            # a node with little memory, so that a too-big context is refused before launch
            "BERTH_MEMORY_LIMIT": NODE_MEMORY_LIMIT,
        },
    ).start()
    yield running
    code, leftovers = running.stop_and_reap()
    assert code == 0, "berth up did not exit cleanly:\n" + "".join(running.output)
    assert not leftovers, f"processes left behind by the stack: {leftovers}"


@pytest.fixture(scope="session")
async def client(stack):
    return await stack.client()


@pytest.fixture
def name(request) -> str:
    """A fresh deployment name per test (a DNS label)."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40].strip("-")
    return f"{base}-{next(_names)}"


@pytest.fixture(scope="session")
def api(stack):
    """An HTTP client for the stack's REST API, with its bearer token."""
    with stack.api() as http:
        yield http
