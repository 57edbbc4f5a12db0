"""Child processes that must not outlive the process that started them (even one killed by SIGKILL)."""

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Run in the child before exec (Popen's preexec_fn): the kernel sends `sig` when the parent dies.
    Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except OSError:
        pass


def killed_with_parent() -> None:
    """preexec_fn for children whose partial work is safe to drop at any point (a download)."""
    die_with_parent(signal.SIGKILL)
