# fedmoe — one place for every install and run step (CI calls `make test` through .ci/run).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SCALE   ?= default
OUT     ?= results/notebooks
# Parallel runs inside `make reproduce` (default: the number of cores; each run uses one torch thread).
JOBS    ?=
export JOBS
# The CPU wheel of torch; CUDA users: `make setup TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>"`.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export FLWR_TELEMETRY_ENABLED = 0
export RAY_USAGE_STATS_ENABLED = 0
export HF_HUB_DISABLE_TELEMETRY = 1
export MPLBACKEND = Agg

.PHONY: help setup all test test-all lint nbval reproduce lab clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name fedmoe --display-name "fedmoe (.venv)"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install the kit with its dev tools

all: setup reproduce  ## set up, then run the main job (every notebook at SCALE, figures into figures/)

lint: setup  ## ruff (the notebooks: pyflakes rules, so no unused import or undefined name)
	$(BIN)/ruff check fedmoe tests reproduce
	$(BIN)/ruff check --select F notebooks

test: lint  ## lint + the fast test suite + the quickstart notebook at smoke scale (nbval)
	$(BIN)/pytest -q -m "not slow" -p no:cacheprovider
	$(MAKE) nbval

test-all: lint  ## every test, slow ones included
	$(BIN)/pytest -q -p no:cacheprovider

nbval: setup  ## execute notebooks at smoke scale and validate them with nbval
	$(BIN)/python reproduce/run_notebooks.py --scale smoke --out $(OUT)/smoke --only quickstart
	$(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg $(OUT)/smoke/00_quickstart.ipynb

reproduce: setup  ## execute every notebook at SCALE (JOBS parallel runs), write figures/ and figures/REPORT.md
	$(BIN)/python reproduce/run_notebooks.py --scale $(SCALE) --out $(OUT)/$(SCALE) --figures figures --report figures/report
	$(BIN)/python reproduce/make_report.py --sections figures/report --report figures/REPORT.md --readme README.md

lab: setup  ## JupyterLab on 127.0.0.1 with the kit's kernel
	$(BIN)/jupyter lab --ip 127.0.0.1 --no-browser --notebook-dir notebooks

clean:  ## remove results and caches (not the venv, not the model cache)
	rm -rf results .pytest_cache .ruff_cache
