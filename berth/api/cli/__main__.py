"""`python -m berth.api.cli ARGS...`: the `berth` command (what the tests and `berth up`'s harness run)."""

from berth.api.cli import main

main()
