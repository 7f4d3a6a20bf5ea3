# specontext: the two commands of the README, and the steps they are made of.
#
#   make demo   first-time setup, the local stack, then a real long document
#               through a real Temporal workflow answered by the engine (CPU)
#   make test   first-time setup, then typecheck, lint, native tests, vitest
#
# Every step is idempotent: stamps and hashes skip what is already done, so a
# second run only re-checks. Builds use at most $(JOBS) cores.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

JOBS ?= 2
export CMAKE_BUILD_PARALLEL_LEVEL := $(JOBS)
CLI := node bin/specontext.js
MODEL_DIR := models/smollm2-135m-instruct
REPORTS := .data/reports
CUDA_VENV := .venv-cuda
VENV_REQS := infra/requirements.txt nodeps:infra/requirements-model.txt tools/requirements-convert.txt

.PHONY: help setup deps venv native ts model head demo test typecheck lint ctest vitest \
	cuda-check down clean distclean

help:
	@echo 'make demo        set up, start the stack, run the demo job (README)'
	@echo 'make test        set up, typecheck, lint, native tests, vitest (README; .ci/run)'
	@echo 'make setup       npm ci, .venv, native addon, dist/, converted model, its retrieval head'
	@echo 'make cuda-check  compile the CUDA sources for sm_90 with nvcc from PyPI wheels'
	@echo 'make down        stop the local stack'
	@echo 'make clean       stop the stack; remove dist/ build/ .data/'
	@echo 'make distclean   clean, and remove node_modules/ .venv/ .venv-cuda/ models/'

# ---- setup -----------------------------------------------------------------

setup: deps venv native ts model head

deps: node_modules/.npm-ci.stamp
node_modules/.npm-ci.stamp: package-lock.json package.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The venv's own stamp holds a hash of its requirement files (infra/venv.sh).
venv:
	infra/venv.sh .venv $(VENV_REQS)

native: deps
	nice npm run build:native -- --parallel $(JOBS)

ts: deps
	npm run build:ts

# The converter skips its work when the output is up to date.
CONVERT := tools/convert_smollm2.py
model: venv
	@if [[ -f $(CONVERT) ]]; then \
	  nice .venv/bin/python $(CONVERT) --out $(MODEL_DIR); \
	else \
	  echo "model: $(CONVERT) not in the tree yet: no model converted"; \
	fi

# The recommended retrieval head of SmolLM2-135M (docs/specontext.md, "Distilled
# head"): the model's first 10 layers with the committed distilled scoring
# tensors, written next to the model (<model>-head), where the engine looks for
# it; without it the engine falls back to the self-derived head (and says so).
HEAD_TENSORS := test/fixtures/smollm2-head-distilled/qk-k10-spread24.safetensors
HEAD_DIR := $(MODEL_DIR)-head
head: model
	@if [[ ! -f $(MODEL_DIR)/model.safetensors ]]; then \
	  echo "head: no $(MODEL_DIR)/model.safetensors: no distilled head assembled"; \
	elif [[ -f $(HEAD_DIR)/model.safetensors && $(HEAD_DIR)/model.safetensors -nt $(HEAD_TENSORS) \
	        && $(HEAD_DIR)/model.safetensors -nt $(MODEL_DIR)/model.safetensors ]]; then \
	  echo "head: $(HEAD_DIR) is up to date"; \
	else \
	  nice .venv/bin/python tools/train_head.py assemble --target $(MODEL_DIR) \
	    --tensors $(HEAD_TENSORS) --out $(HEAD_DIR); \
	fi

# ---- the two README commands ------------------------------------------------

# The stack stays up afterwards so the workflow can be looked at in the
# Temporal UI; `make down` stops it.
demo: setup
	$(CLI) stack up
	@if $(CLI) demo --help >/dev/null 2>&1; then \
	  $(CLI) demo; \
	else \
	  echo; \
	  echo "demo: STOPPED at step 'run the demo job': the 'specontext demo' command"; \
	  echo "      (job service: workflow, worker, CLI) is not in the tree yet."; \
	  echo "      No answer was produced. The stack is up: $(CLI) stack status"; \
	  exit 1; \
	fi

# The test runs start (and stop) their own isolated stack on free ports; the
# default stack of `make demo` is left alone.
test: setup
	@mkdir -p $(REPORTS)
	@rm -f $(REPORTS)/ctest.xml $(REPORTS)/vitest.json
	$(MAKE) --no-print-directory typecheck lint
	@rc=0; \
	$(MAKE) --no-print-directory ctest || rc=$$?; \
	$(MAKE) --no-print-directory vitest || rc=$$?; \
	node dist/infra/test-summary.js $(REPORTS)/ctest.xml $(REPORTS)/vitest.json || rc=$$?; \
	exit $$rc

typecheck: deps
	npm run typecheck

lint: deps
	npx biome check .

ctest: native
	cd build && nice ctest --output-on-failure -j $(JOBS) --output-junit ../$(REPORTS)/ctest.xml

vitest: deps
	nice npx vitest run --reporter=default --reporter=json --outputFile.json=$(REPORTS)/vitest.json

# ---- CUDA compile check (no GPU needed) ------------------------------------

cuda-check:
	infra/venv.sh $(CUDA_VENV) infra/requirements-cuda.txt
	tools/cuda_compile_check.sh "$$(ls $(CUDA_VENV)/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -1)"

# ---- housekeeping ------------------------------------------------------------

down:
	@if [[ -f dist/cli/main.js ]]; then $(CLI) stack down; else echo 'down: nothing built, nothing running'; fi

clean: down
	rm -rf dist build .data

distclean: clean
	rm -rf node_modules .venv $(CUDA_VENV) models
