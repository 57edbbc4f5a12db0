"""Children that die with their parent (berth.common.process_lifetime), on real processes: asked for
by the child itself (the hub download's way, no preexec_fn) or in preexec_fn, where nothing is
loaded after the fork (prctl is looked up at import)."""

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from berth.common import process_lifetime

# A middle process starts a child, prints the child's pid, and waits; the test kills the middle one.
MIDDLE = textwrap.dedent("""
    import os, subprocess, sys, time
    from berth.common.process_lifetime import die_with_parent
    child = {child}
    print(child.pid, flush=True)
    time.sleep(60)
""")
ASKS_ITSELF = (  # as berth.models.hub_fetch does, with the pid its parent passed it
    "subprocess.Popen([sys.executable, '-c', 'import sys, time; from berth.common.process_lifetime import "
    "exit_with_parent; exit_with_parent(int(sys.argv[1])); time.sleep(60)', str(os.getpid())])"
)
PREEXEC = (
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=lambda: die_with_parent(9))"
)


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def test_prctl_is_looked_up_before_any_fork():
    assert process_lifetime._PRCTL is not None, "Linux: resolved at import"


@pytest.mark.parametrize("child", [ASKS_ITSELF, PREEXEC], ids=["child-asks-itself", "preexec-fn"])
def test_a_child_dies_when_its_parent_is_killed(child):
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE.format(child=child)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(middle.stdout.readline())
        assert psutil.pid_exists(pid)
        middle.kill()  # SIGKILL: nothing of the middle process's own runs
        middle.wait()
        assert _gone(pid), "the child outlived its parent"
    finally:
        middle.kill()
        middle.wait()
        try:
            psutil.Process(pid).kill()
        except (psutil.NoSuchProcess, UnboundLocalError):
            pass


def test_a_child_whose_parent_died_before_it_asked_goes_at_once():
    """The child was slow to start and its parent is gone already: it is not left running."""
    code = "from berth.common.process_lifetime import exit_with_parent; exit_with_parent(1); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == -signal.SIGKILL and "survived" not in done.stdout
