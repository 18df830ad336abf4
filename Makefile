# Two commands on a fresh machine: `make run` and `make test`; each installs what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE := loquilex_nb/data/sample.wav

.PHONY: install browser run run-cli test bench bench-quick fixtures clean

$(STAMP): pyproject.toml
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

# JupyterLab with the loquilex extension on, opening the quickstart notebook.
# As root (CI, containers) Jupyter needs --allow-root. Override PORT/IP as needed.
PORT ?= 8888
IP ?= 127.0.0.1
run: install
	$(VENV)/bin/jupyter lab --allow-root --no-browser --ip=$(IP) --port=$(PORT) \
		--ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks/01-quickstart.ipynb

# The command-line path, without Jupyter: caption the bundled sample.
run-cli: install
	$(VENV)/bin/loquilex-nb transcribe $(SAMPLE) --out captions-out/sample

# The browser test drives Debian's chromium with Playwright (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and we are not root: the browser test will be skipped"; fi; }

test: install browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/run.py

bench-quick: install
	HF_HUB_OFFLINE=1 $(PY) bench/run.py --quick

# Regenerate the committed audio fixtures (needs Debian's espeak-ng and sox).
fixtures:
	command -v espeak-ng >/dev/null && command -v sox >/dev/null || (apt-get update && apt-get install -y espeak-ng sox)
	bash tests/fixtures/make_fixtures.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache bench-out captions-out
