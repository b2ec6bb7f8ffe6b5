# minifold make targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two cores here: pin torch/BLAS threads so a busy second core cannot slow small
# problems 4-30x. Override on bigger machines: `make run THREADS=8`.
THREADS ?= 2
export OMP_NUM_THREADS := $(THREADS)
export MKL_NUM_THREADS := $(THREADS)
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
# A user error prints one line (minifold.run.main); HYDRA_FULL_ERROR=1 shows its traceback.
# Bugs keep their full traceback either way, so it is not set here.

ARGS ?=
# Which torch `make install` puts in first. torch==2.13.0 from pip's configured
# sources is the CPU build on this project's machines (a file on their disk); on a
# plain Linux machine PyPI's torch==2.13.0 is a CUDA build. Choose explicitly:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu   # CPU build from PyTorch's index
#   make install TORCH="torch==2.13.0+cu128" TORCH_INDEX=https://download.pytorch.org/whl/cu128   # a chosen CUDA build
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-all bench sweep report wandb-sync lint clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(if $(TORCH),$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)))
	$(PY) -m pip install -q -e '.[dev,sweep]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the CPU torch build and minifold[dev,sweep]

run: $(STAMP) ## run the whole pipeline on the defaults (ARGS="dim=3 model=birnn" to override)
	$(PY) -m minifold.run $(ARGS)

test: $(STAMP) ## run the test suite (tiny configs, a few minutes)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP) ## run every test, the slow ones too
	$(PY) -m pytest -q -m "" $(ARGS)

BENCH ?= generator folding models launches
bench: $(STAMP) ## benchmarks -> outputs/bench/*.json, *.md (~1 h; BENCH="generator folding" for minutes)
	$(PY) -m minifold.bench $(BENCH) --threads $(THREADS)

sweep: $(STAMP) ## the headline study (dim x back_discount x model), default size (~1 h on 2 cores)
	$(PY) -m minifold.run -m experiment=headline $(ARGS)

report: $(STAMP) ## rebuild the experiments' READMEs from their sweep summaries
	$(PY) -m minifold.sweep experiments

wandb-sync: $(STAMP) ## upload every offline W&B run under outputs/ (needs an account)
	@find outputs -type d -name 'offline-run-*' -print0 | xargs -0 -r -n 20 $(VENV)/bin/wandb sync

# lint-imports reads the package in this checkout (PYTHONPATH=.), whatever else is installed.
lint: $(STAMP) ## ruff check and format check, import layers (lint-imports), types (mypy)
	$(VENV)/bin/ruff check minifold tests hydra_plugins
	$(VENV)/bin/ruff format --check minifold tests hydra_plugins
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs/* .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
