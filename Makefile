# The two commands a newcomer runs: `make quickstart` and `make test`. Both set up .venv themselves.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# vLLM has its own venv: it pins its own torch and transformers (scripts/install_vllm.sh says which).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: quickstart test lint format venv vllm clean

venv: $(STAMP)

vllm: $(VLLM_STAMP)

$(VLLM_STAMP): scripts/install_vllm.sh
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=/path/to/python3.11"; exit 1; }
	PYTHON=$(PYTHON) bash scripts/install_vllm.sh $(VLLM_VENV)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run: make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

quickstart: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/quickstart.sh

# ART_REQUIRE_VLLM: the vLLM tests fail, not skip, if .venv-vllm is broken.
test: $(STAMP) $(VLLM_STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" ART_REQUIRE_VLLM=1 $(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf runs data/synth data/quickstart-seed*
