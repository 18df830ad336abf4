# Two commands on a fresh machine: `make run` and `make test`; each installs what is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE := loquilex_nb/data/sample.wav

.PHONY: install run test bench fixtures clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/loquilex-nb transcribe $(SAMPLE) --out captions-out/sample

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/run.py

# Regenerate the committed audio fixtures (needs Debian's espeak-ng and sox).
fixtures:
	command -v espeak-ng >/dev/null && command -v sox >/dev/null || (apt-get update && apt-get install -y espeak-ng sox)
	bash tests/fixtures/make_fixtures.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache bench-out captions-out
