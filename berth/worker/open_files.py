"""Room for one open file per supervised engine and more in the worker.

The worker holds, for each engine it watches, a pidfd and, while it probes, a connection, besides
its logs and Temporal's connections. A soft limit of 1024 open files (a common default) would stop
a node at roughly 500 supervised engines with EMFILE errors that look like engine failures. The
hard limit is what the administrator allows; the soft limit is raised to it (capped), as Go
programs such as Temporal and Traefik do for themselves.
"""

import resource

CAP = 1 << 20  # an "unlimited" hard limit is not a number the kernel takes as a soft limit


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (capped); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CAP if hard == resource.RLIM_INFINITY else min(hard, CAP)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep what was given
            pass
    return soft
