# `make demo` and `make test` work on a fresh machine with Python 3.11: each creates .venv if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := experiments/diffusion/mnist.yaml

.PHONY: install demo test test-slow lint format clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## train the MNIST diffusion demo, then write 64 samples
	$(BIN)/lit-genai fit --config $(DEMO)
	$(BIN)/lit-genai predict --config $(DEMO) --ckpt_path last
	@echo "Samples: runs/diffusion-mnist/predictions/grid.png (training grids in runs/diffusion-mnist/samples/)"

test: $(STAMP)  ## the default (fast) test suite
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

lint: $(STAMP)
	$(BIN)/ruff check lit_genai tests benchmarks examples
	$(BIN)/ruff format --check lit_genai tests benchmarks examples

format: $(STAMP)
	$(BIN)/ruff format lit_genai tests benchmarks examples
	$(BIN)/ruff check --fix lit_genai tests benchmarks examples

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
