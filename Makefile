# lesionseg — every target builds the virtual environment it needs on first use.
# `make help` lists the targets.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := data/demo

.DEFAULT_GOAL := help
.PHONY: help install demo-data sweep-beta train test test-fast tensorboard bench bench-gpu docs clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU wheel of torch first: an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
	# ray: the Ray sweep backend, tested on a local instance (adds ~15 s and 240 MB)
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	# panoptica (the tests' oracle of its lesion matching) pins numpy<2.3; it runs with the numpy above
	$(BIN)/pip install --quiet --no-deps panoptica==2.1.7
	touch $@

install: $(STAMP) ## create .venv and install lesionseg with its test tools and Ray

$(DEMO)/datalist.json: | $(STAMP)
	# runs only while datalist.json (written last) is missing: an interrupted dataset is moved aside, not mixed in
	$(BIN)/lesionseg demo-data $(DEMO) --force

demo-data: $(DEMO)/datalist.json ## write the synthetic phantom dataset to data/demo/

sweep-beta: $(STAMP) $(DEMO)/datalist.json ## train, predict, evaluate β = 0.5 … 0.9 on the demo data; report
	$(BIN)/lesionseg sweep configs/sweep_beta.yaml

train: $(STAMP) $(DEMO)/datalist.json ## one demo run (make train ARGS="loss.beta=0.7")
	$(BIN)/lesionseg train configs/demo.yaml $(ARGS)

test: $(STAMP) ## run the whole test suite (slow end-to-end tests included)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP) ## the suite without the tests marked slow (trainings, end-to-end CLI, Ray): for iterating
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

tensorboard: $(STAMP) ## watch experiments/ in TensorBoard (http://localhost:6006)
	$(BIN)/tensorboard --logdir experiments

bench: $(STAMP) ## run the benchmarks in bench/ (figures, not tests; bench_robust.py, hours, is run in parts by hand)
	@for script in bench/bench_*.py; do case $$script in bench/bench_robust.py|bench/bench_gpu.py) continue;; esac; \
	  echo "== $$script"; $(BIN)/python $$script || exit 1; done

bench-gpu: $(STAMP) ## on a CUDA machine: CUDA tests, bf16 throughput and MFU (GPU cache, store), evaluator, a sweep; < 8 min
	$(BIN)/python bench/bench_gpu.py --out bench/gpu-latest.md

docs: $(STAMP) ## build the documentation site into site/ (mkdocs build --strict)
	$(BIN)/mkdocs build --strict

clean-venv: ## remove .venv
	rm -rf $(VENV)
