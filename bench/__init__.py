"""berth's benchmarks: what the control plane adds on top of the engine, measured side by side.

    python -m bench.run [--quick] [--only P1,P4] [--out bench/results/latest.json]

One module per measurement (startup, overhead, crash, gateway, footprint, scale); `common` holds the
shared pieces (timing statistics, the stack session, the bare engine, history analysis, the table).
Benchmarks are not tests: nothing here is collected by pytest, and nothing in `make test` depends on
these timings.
"""
