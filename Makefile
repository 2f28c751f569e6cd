# Everything runs in .venv, created on first use. torch is pinned to the CPU wheel that the
# development machines carry on disk; an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0

.PHONY: help install test lint serve bench clean

help:
	@echo "make test    run the whole test suite (creates .venv on first use)"
	@echo "make serve   start the service on 127.0.0.1:8000 (builds the demo model repository first)"
	@echo "make lint    ruff on the packages and tests"
	@echo "make bench   the benchmarks, short preset (a few minutes; figures in bench/results/)"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[train,export,dev]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check mapex_serve training export tests

# The demo repository is built once (pre-training the tiny model on first use, a few minutes).
serve: install
	@ls models/*/*/manifest.json >/dev/null 2>&1 || $(BIN)/python -m export.build --all --repo models --jobs 2
	$(BIN)/python -m mapex_serve --host 127.0.0.1 --port 8000 --repo models

# Short preset: fewer repeats and requests than the scripts' defaults; the scene is the full 4096 x 4096.
# bench.peer runs standalone Triton beside the service (its own .venv-triton, created on first use); bench.arriving
# posts a 2048² scene over a 100 Mbit/s link, as a COG (read as it arrives; raw and multipart) and with its directory last.
bench: install
	@ls models/*/*/manifest.json >/dev/null 2>&1 || $(BIN)/python -m export.build --all --repo models --jobs 2
	$(BIN)/python -m bench.pruning --repeats 10 --warmup 3
	$(BIN)/python -m bench.serve --requests 256
	$(BIN)/python -m bench.scene --size 4096 --rounds 3
	$(BIN)/python -m bench.peer --requests 256 --rounds 3 --size 4096
	$(BIN)/python -m bench.engine_speed --repeats 10
	$(BIN)/python -m bench.arriving --size 2048 --rounds 2
	$(BIN)/python -m bench.goals_plot

clean:
	rm -rf $(VENV) .venv-triton .venv-kserve .pytest_cache build *.egg-info
