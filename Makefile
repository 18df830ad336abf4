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

install: $(STAMP)

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
