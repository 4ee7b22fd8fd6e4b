# Two everyday commands: `make demo` and `make test`. Both set up .venv first (idempotent).
# `make test-fast` runs the unit tests only (about a minute), for the edit-run loop.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GLUE_DIR ?= $(if $(wildcard ../shared/glue),$(abspath ../shared/glue),)
export GLUE_DIR FLWR_TELEMETRY_ENABLED=0 TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test test-fast lint bench scale robustness docker-test clean

setup: $(STAMP)

# torch is installed first and pinned: its CPU build is what a plain machine should get.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The demo: the defaults (pafi-hiwi, 4 label-skewed clients, 5 rounds), SST-2 sentences
# cut at 64 tokens, and every evaluation on the whole dev set (872 sentences).
demo: setup
	HF_HUB_OFFLINE=$(if $(GLUE_DIR),1,0) $(BIN)/fedpafi simulate --max-seq-length 64 \
		--eval-max-examples 0

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/unit

lint: setup
	$(BIN)/ruff check .

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.run

# Round time breakdown, memory at 1,000 clients, fedpafi beside a plain Flower app (minutes).
scale: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.scale

robustness: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.robustness

# The compose stack on a real Docker engine, end to end (root, minutes; not part of `test`).
docker-test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m simulations.docker_check

clean:
	rm -rf $(VENV) runs .pytest_cache
