# Two commands on a fresh machine: `make run` and `make test`; each installs what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE := loquilex_nb/data/sample.wav

.PHONY: install browser run run-cli test lint bench bench-quick fixtures clean labext labext-check

$(STAMP): pyproject.toml jupyter_server_ext/labextension/package.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lab]'
	touch $(STAMP)

# The hub's proxy for the JupyterHub tests and benchmarks: pinned by the committed lockfile,
# installed into deploy/jupyterhub/node_modules (never globally).
CHP := deploy/jupyterhub/node_modules/.bin/configurable-http-proxy
$(CHP): deploy/jupyterhub/package-lock.json
	cd deploy/jupyterhub && npm ci --no-audit --no-fund --loglevel=error
	touch $(CHP)

install: $(STAMP) $(CHP)

# JupyterLab with the loquilex extension on, at the quickstart notebook. Once it answers, the
# URL with its token is printed last, framed (and opened where there is a screen).
# `loquilex-nb lab` adds --allow-root when run as root (CI, containers). Override PORT/IP as needed.
PORT ?= 8888
IP ?= 127.0.0.1
run: install
	$(VENV)/bin/loquilex-nb lab --ip=$(IP) --port=$(PORT) --root=$(CURDIR) --open=notebooks/01-quickstart.ipynb

# The command-line path, without Jupyter: caption the bundled sample.
run-cli: install
	$(VENV)/bin/loquilex-nb transcribe $(SAMPLE) --out captions-out/sample

# The browser test drives Debian's chromium with Playwright (never a downloaded browser).
# In CI (CI set) a missing chromium fails the browser test instead of skipping it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and we are not root: the browser test will be skipped (a failure in CI)"; fi; }

# Two pytest-xdist workers, a whole file to one worker (nbval's notebooks run in order, and a
# module's servers stay its own); each worker runs the leak checker on its tests and sweeps its
# own children at its end. numpy runs single-threaded, as in a worker: in-process decodes then
# match a worker's to the last bit.
test: install browser labext-check lint
	HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile

# Lint (ruff) the whole tree and type-check (mypy) the layers every process shares:
# core, supervisor and the server extension (their list is in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The JupyterLab extension: sources in labextension/, the build committed in $(LABEXT_OUT) (so
# installing needs no node). Everything the build reads is pinned by package-lock.json (the
# JupyterLab core metadata too), which makes it byte-reproducible.
LABEXT_OUT := jupyter_server_ext/labextension
labextension/node_modules/.package-lock.json: labextension/package-lock.json
	cd labextension && npm ci --no-audit --no-fund --loglevel=error
	touch $@

labext: install labextension/node_modules/.package-lock.json
	cd labextension && npx tsc && ../$(VENV)/bin/jupyter-builder build . \
		--core-package-file=node_modules/@jupyterlab/core-meta/core.package.json

# With node: unit tests, then rebuild and fail if the committed build differs from the sources.
labext-check: install
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  echo "node/npm not found: skipping the labextension rebuild check (the committed build is used)"; \
	else \
	  $(MAKE) --no-print-directory labext && (cd labextension && node --test test/) && \
	  rm -rf .labext-committed && git archive --format=tar HEAD $(LABEXT_OUT) 2>/dev/null | tar -x -C . --transform 's,^$(LABEXT_OUT),.labext-committed,' 2>/dev/null; \
	  if [ -d .labext-committed ] && ! diff -r .labext-committed $(LABEXT_OUT) >/dev/null; then \
	    rm -rf .labext-committed; \
	    echo "ERROR: the committed JupyterLab extension build in $(LABEXT_OUT) is stale: it was rebuilt from labextension/ (commit it)"; exit 1; \
	  fi; rm -rf .labext-committed; \
	fi

bench: install
	command -v espeak-ng >/dev/null && command -v sox >/dev/null || (apt-get update && apt-get install -y espeak-ng sox)
	HF_HUB_OFFLINE=1 $(PY) bench/run.py

bench-quick: install
	HF_HUB_OFFLINE=1 $(PY) bench/run.py --quick

# Regenerate the committed audio fixtures (needs Debian's espeak-ng and sox).
fixtures:
	command -v espeak-ng >/dev/null && command -v sox >/dev/null || (apt-get update && apt-get install -y espeak-ng sox)
	bash tests/fixtures/make_fixtures.sh
	bash tests/fixtures/make_room_fixtures.sh --committed

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache bench-out captions-out labextension/node_modules labextension/lib
