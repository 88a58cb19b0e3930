# xmr — `make help` lists the targets. Everything runs inside ./.venv, created by `make install`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The exact torch/torchvision pair of the project's machines (pyproject.toml declares ranges).
CONSTRAINTS := constraints.txt
DEMO_DIR ?= logs/demo
DEMO_EPOCHS ?= 15
REPORT_ROOT ?= $(DEMO_DIR)
REPORT_OUT ?= $(REPORT_ROOT)
# Photo folder for the HTML gallery (optional): make report REPORT_IMAGES=../shared/data/flickr8k-1k/images
REPORT_IMAGES ?=
# The analysis notebook: the runs root it reads (what `xmr report` reads) and where the executed
# analysis.ipynb and its plots go.
NOTEBOOK_ROOT ?= $(REPORT_ROOT)
NOTEBOOK_OUT ?= $(NOTEBOOK_ROOT)
# Where `make gpu-check` writes its logs and gpu_check.json (empty: $OUT, else logs/gpu_check)
GPU_CHECK_OUT ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-fast demo report notebook reproduce reproduce-quick lint format clean bench gpu-check

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev,wandb]'
	touch $@

install: $(BIN)/.installed ## create .venv and install xmr with its dev and wandb extras

test: install ## run the whole test suite (what .ci/run calls)
	$(BIN)/pytest -q

test-fast: install ## the test suite without the slow end-to-end tests (`slow` marker): ~1 min on 2 cores
	$(BIN)/pytest -q -m "not slow"

demo: install ## SYNTHETIC demo: store, lists, 4 losses + DCCA/CMPM/VSE++/InfoNCE + cosine -> re-ranker vs CLIP cosine, report
	@echo "== xmr demo: SYNTHETIC data (seeded generator, shaped like Flickr30k, 2,000/200/200 images) =="
	@echo "== expected wall time on 2 CPU cores: about 6 minutes (2 jobs at a time, 1 thread each; the re-ranker alone adds about 1 min 45 s) =="
	$(BIN)/xmr mine data=synthetic_demo
	$(BIN)/xmr train -m experiment=demo trainer.max_epochs=$(DEMO_EPOCHS) hydra/launcher=local \
	    loss=lambdarank,neural_ndcg,listnet,ranknet hydra.sweep.dir=$(DEMO_DIR)/rankers
	$(BIN)/xmr train -m experiment=demo trainer.max_epochs=$(DEMO_EPOCHS) hydra/launcher=local \
	    model=dcca,cmpm,vsepp,infonce hydra.sweep.dir=$(DEMO_DIR)/baselines
	$(BIN)/xmr train experiment=demo model=cosine hydra.run.dir=$(DEMO_DIR)/clip_cosine
	$(BIN)/xmr train experiment=rerank trainer.max_epochs=$(DEMO_EPOCHS) hydra.run.dir=$(DEMO_DIR)/reranker
	$(BIN)/xmr report $(DEMO_DIR) --out $(DEMO_DIR)

report: install ## Table 2 (md/csv/tex), significance, plots, report.html: REPORT_ROOT=sweep dir
	$(BIN)/xmr report $(REPORT_ROOT) --out $(REPORT_OUT) $(if $(REPORT_IMAGES),--images $(REPORT_IMAGES))

notebook: install ## execute notebooks/analysis.py as a notebook on NOTEBOOK_ROOT -> NOTEBOOK_OUT/analysis.ipynb
	$(BIN)/python notebooks/run.py $(NOTEBOOK_ROOT) --out $(NOTEBOOK_OUT)

reproduce: install ## the paper's pipeline: mine, 4 losses x 5 seeds + baselines, report (REPRO_STRICT=1: fail on a mismatch)
	$(BIN)/python -m xmr.reproduce $(if $(REPRO_STRICT),--strict)

reproduce-quick: install ## SYNTHETIC demo store, 1 epoch, 1 seed (~5 min on 2 cores), checked against reproducibility/expected_quick.json
	$(BIN)/python -m xmr.reproduce --quick --strict

bench: install ## performance figures (SYNTHETIC paper-scale store; prints numbers, asserts none)
	$(BIN)/python benchmarks/run_all.py --threads 1

gpu-check: install ## on a machine with a GPU: CUDA tests, bf16 vs fp32 run, ensemble, GPU figures (< 5 min; GPU_CHECK_OUT=dir)
	PY=$(BIN)/python benchmarks/gpu_check.sh $(GPU_CHECK_OUT)

lint: install ## ruff lint + format check
	$(BIN)/ruff check xmr tests notebooks
	$(BIN)/ruff format --check xmr tests notebooks

format: install ## ruff format + autofix
	$(BIN)/ruff format xmr tests notebooks
	$(BIN)/ruff check --fix xmr tests notebooks

clean: ## remove generated data, logs and caches (keeps .venv)
	rm -rf data logs outputs multirun .pytest_cache .ruff_cache
