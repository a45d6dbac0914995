# fedmoe — one place for every install and run step (CI calls `make test` through .ci/run).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SCALE   ?= default
OUT     ?= results/notebooks
# Parallel runs inside `make reproduce` (default: the number of cores; each run uses one torch thread).
JOBS    ?=
export JOBS
# The locked environment `make setup` installs (exact versions and hashes, the CPU torch wheel included);
# `make lock` regenerates it from pyproject.toml's ranges. `make setup LOCK=` installs the ranges instead
# (newest releases that day), e.g. for CUDA: `make setup LOCK= TORCH_SPEC="torch==2.13.0 --index-url <CUDA index>"`.
LOCK       ?= reproduce/requirements.lock
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export FLWR_TELEMETRY_ENABLED = 0
export RAY_USAGE_STATS_ENABLED = 0
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: help setup lock all test test-all lint nbval reproduce lab test-browser clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
ifeq ($(strip $(LOCK)),)
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
else
	$(BIN)/pip install --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	$(BIN)/pip check
endif
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name fedmoe --display-name "fedmoe (.venv)"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install the kit with its dev tools (the locked versions)

lock:  ## re-resolve pyproject.toml's ranges into the lock and environment.yml (the one way to upgrade)
	$(PY) reproduce/lock_env.py --lock $(or $(LOCK),reproduce/requirements.lock) --torch "$(TORCH_SPEC)"

all: setup reproduce  ## set up, then run the main job (every notebook at SCALE, figures into figures/)

lint: setup  ## ruff (the notebooks: pyflakes rules, so no unused import or undefined name)
	$(BIN)/ruff check fedmoe tests reproduce
	$(BIN)/ruff check --select F notebooks

test: lint  ## lint + the fast test suite + the quickstart and learn notebooks at smoke scale (nbval)
	$(BIN)/pytest -q -m "not slow" -p no:cacheprovider
	$(MAKE) nbval

test-all: lint  ## every test, slow ones included
	$(BIN)/pytest -q -p no:cacheprovider

nbval: setup  ## execute the quickstart and the learn notebooks at smoke scale, check their figures, validate with nbval
	$(BIN)/python reproduce/run_notebooks.py --scale smoke --out $(OUT)/smoke --only quickstart learn/ --require-images
	$(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg \
		$(OUT)/smoke/00_quickstart.ipynb $(OUT)/smoke/learn

reproduce: setup  ## execute every notebook at SCALE (JOBS parallel runs), write figures/ and figures/REPORT.md
	$(BIN)/python reproduce/run_notebooks.py --scale $(SCALE) --out $(OUT)/$(SCALE) --figures figures --report figures/report
	$(BIN)/python reproduce/make_report.py --sections figures/report --report figures/REPORT.md --readme README.md

# Extra JupyterLab flags, e.g. `make lab LAB_ARGS="--port 9999"`.
LAB_ARGS ?=
lab: setup  ## JupyterLab on 127.0.0.1 rooted at the repository, fedmoe kernel (adds --allow-root when run as root)
	$(BIN)/jupyter lab --ip 127.0.0.1 --no-browser --ServerApp.root_dir=. \
		--MappingKernelManager.default_kernel_name=fedmoe $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

test-browser: setup  ## run a notebook in JupyterLab in headless Chromium (as root, apt-get installs chromium if missing)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
		else \
			echo "test-browser needs /usr/bin/chromium and /usr/bin/chromedriver:" \
				"sudo apt-get install -y chromium chromium-driver" >&2; exit 1; \
		fi; \
	fi
	$(BIN)/pytest -q -p no:cacheprovider -m browser tests/browser

clean:  ## remove results and caches (not the venv, not the model cache)
	rm -rf results .pytest_cache .ruff_cache
