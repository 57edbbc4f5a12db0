"""berth: a model-deployment control plane on Temporal (see README.md and ../shared/DESIGN.md)."""

import sys

# httpx imports its command-line client (httpx._main: rich, pygments, click) whenever those happen to
# be installed (typer, uvicorn and pytest bring them): ~6 MB and ~90 ms of CPU in every berth process
# that speaks HTTP (worker, API, CLI). berth never calls httpx.main(); a module marked absent makes
# httpx take its own fallback for a missing extra (`httpx` on the command line still works).
sys.modules.setdefault("httpx._main", None)
