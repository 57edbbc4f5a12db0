"""Child processes that must not outlive the process that started them (even one killed by SIGKILL).

Linux's PR_SET_PDEATHSIG: the kernel sends a signal to a process when its parent dies. Two ways to
ask for it:

- `die_with_parent` as Popen's preexec_fn: it runs in the child between fork and exec. Only what
  was prepared before the fork runs there: prctl is looked up in libc once, when this module is
  imported (loading a library after fork takes the loader's lock, which another thread of a
  threaded parent may have held at the fork: a child that never reaches exec).
- `exit_with_parent` called by the child itself, first thing (no preexec_fn at all, so the parent
  may spawn it the fast way, vfork/posix_spawn): it also exits at once if the parent died before.
"""

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def _prctl():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no such signal, these are no-ops
        return None


_PRCTL = _prctl()  # resolved now, never after a fork


def set_death_signal(sig: int) -> bool:
    """Ask the kernel for `sig` when this process's parent dies; False where it cannot (not Linux)."""
    if _PRCTL is None:
        return False
    return _PRCTL(PR_SET_PDEATHSIG, int(sig)) == 0


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Run in the child before exec (Popen's preexec_fn): the kernel sends `sig` when the parent dies.
    Linux only; elsewhere a no-op."""
    set_death_signal(sig)


def exit_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Called by a child at its start: `sig` when the process `parent_pid` (its parent) dies, and
    if that parent is already gone (it died while this child started), `sig` now."""
    set_death_signal(sig)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
