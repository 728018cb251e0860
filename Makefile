# The two commands a newcomer runs: `make run` (the demo) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: install install-test run test lint clean

# Two installs, each once (a stamp in the venv, redone when a pyproject changes): `install`
# is what running needs, the runtime dependencies only (about 80 MB); `install-test` adds
# the [test] extra for the suite and lint (pytest, playwright, mypy, matplotlib, picows:
# about 550 MB in all).
install: $(VENV)/.installed-run
install-test: $(VENV)/.installed-test

# The core first: the server depends on it (psx-quote-core), and pip takes that installed
# copy rather than looking for it on an index. The client package (clients/python, which
# depends on the core too) only with the tests: the suite and the benchmark use it, the
# server does not.
$(VENV)/.installed-run: pyproject.toml core/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (set PYTHON=python3.12 or similar)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e core
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run clients/python/pyproject.toml
	$(PY) -m pip install --quiet -e clients/python -e '.[test]'
	touch $@

# Without REDIS_URL: one process, the simulated market in-process, no Redis needed.
# With REDIS_URL: the publisher and the service as two processes through that Redis. When
# either exits, the other is stopped and waited for, so no line of it comes after make's,
# and the recipe ends with the code of the one that exited first: make's "Error 2" is a bad
# setting, "Error 3" Redis refusing REDIS_URL (make itself then exits 2, as on any error).
# Ctrl-C reaches both. The loop polls: `wait -n` is not in POSIX sh.
run: install
	@if [ -z "$$REDIS_URL" ]; then exec $(PY) -m service; fi; \
	$(PY) -m publisher simulate & pub=$$!; \
	$(PY) -m service & svc=$$!; \
	trap 'kill -TERM $$pub $$svc 2>/dev/null' TERM; trap : INT; \
	while kill -0 $$pub 2>/dev/null && kill -0 $$svc 2>/dev/null; do sleep 0.2; done; \
	if kill -0 $$svc 2>/dev/null; then first=$$pub; other=$$svc; else first=$$svc; other=$$pub; fi; \
	kill -TERM $$other 2>/dev/null; \
	while kill -0 $$other 2>/dev/null; do sleep 0.2; done; \
	wait $$first; code=$$?; wait $$other; code2=$$?; [ $$code -ne 0 ] || code=$$code2; \
	exit $$code

# The JavaScript client's dev dependencies (typescript and ws: the tests type-check its
# examples with tsc and run it in Node), from its committed package-lock.json; again only
# when that lock file is newer than the install.
JS_CLIENT := clients/js
.PHONY: js
js:
	@command -v npm >/dev/null || { echo "npm not found: the JS client's tests need Node.js 20+ and npm (bash .ci/system-packages installs them)"; exit 1; }
	@test $(JS_CLIENT)/node_modules/.package-lock.json -nt $(JS_CLIENT)/package-lock.json || \
		{ echo "npm ci in $(JS_CLIENT)"; cd $(JS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error; }

# System packages (redis-server, chromium, nginx, npm; docker.io, docker-compose and debootstrap
# as root) through the same script CI uses: it installs them where it can, or names each one
# missing.
# Two pytest-xdist workers: most tests wait on processes and sockets, and tests/conftest.py
# keeps each module on one worker and the machine-loading ones (benchmark, soak, storm,
# network hosts) on the same worker, one at a time. `TEST_WORKERS=0` runs them in one process.
TEST_WORKERS ?= 2
test: install-test
	@bash .ci/system-packages
	@$(MAKE) --no-print-directory js
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# Lint, types and the import contracts (.importlinter): what CI checks besides the tests.
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The benchmark (bench/README.md): the service and its peers one after another, about
# 15 minutes; results in bench/results/. `make bench BENCH_ARGS=--quick` for seconds.
NODE_PEERS := bench/peers/node
.PHONY: bench
bench: install-test
	@command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)"; exit 1; }
	$(PY) -m pip install --quiet -r bench/requirements.txt
	@if ! command -v npm >/dev/null; then \
		echo "npm not found: the Node peers will be reported as not started"; \
	elif ! test $(NODE_PEERS)/node_modules/.package-lock.json -nt $(NODE_PEERS)/package-lock.json; then \
		(cd $(NODE_PEERS) && npm ci --no-audit --no-fund --loglevel=error) || \
			echo "npm ci failed: the Node peers will be reported as not started"; \
	fi
	@command -v cc >/dev/null || { echo "cc not found: the floor program (bench/floor.c) needs a C compiler (apt-get install gcc)"; exit 1; }
	@mkdir -p bench/results/tmp
	cc -O2 -Wall -o bench/results/tmp/floor bench/floor.c
	$(PY) -m bench $(BENCH_ARGS)
	$(PY) -m bench.cluster $(filter --quick --no-pin,$(BENCH_ARGS))

# Lighthouse against the demo page, mobile and desktop: the demo on a free port (no Redis),
# the four scores, main-thread work, TBT, CLS, compression and cache policy printed, JSON
# reports in tools/lighthouse/reports/. Lighthouse is pinned at 12.2.3 (later versions need
# Node 22) by tools/lighthouse/package-lock.json; Chromium is CHROME_PATH (Debian's by default).
LIGHTHOUSE := tools/lighthouse
.PHONY: lighthouse
lighthouse: install
	@command -v npm >/dev/null || { echo "npm not found: Lighthouse needs Node.js 20+ and npm"; exit 1; }
	@test $(LIGHTHOUSE)/node_modules/.package-lock.json -nt $(LIGHTHOUSE)/package-lock.json || \
		{ echo "npm ci in $(LIGHTHOUSE)"; cd $(LIGHTHOUSE) && npm ci --no-audit --no-fund --loglevel=error; }
	CHROME_PATH=$${CHROME_PATH:-/usr/bin/chromium} $(PY) $(LIGHTHOUSE)/run.py

# The README's pictures (docs/screenshot.png, docs/screenshot-phone.png) from what `make run`
# shows: the demo on a free port, Debian's Chromium at desktop and phone sizes.
.PHONY: screenshot
screenshot: install-test
	$(PY) tools/screenshot.py

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts *.egg-info $(JS_CLIENT)/node_modules
