# The two commands of the README: `make run` (set up, then run the pipeline flow) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A local wheel folder (PIP_FIND_LINKS) holds the CPU build of torch on some machines; uv does not read pip's config.
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/site_cache
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
# Byte code in .cache/pycache, even where PYTHONDONTWRITEBYTECODE is set: without a cache every stage, DVC and
# Prefect process compiles torch, diffusers and transformers again (~10 s of CPU each; uv installs no .pyc files).
unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX := $(CURDIR)/.cache/pycache

.PHONY: install run test test-fast repro serve server bench gpu-kit clean-env

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python $(FIND_LINKS) -c constraints.txt -e ".[test]" \
	  || $(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

install: $(BIN)/.installed

run: install            ## the whole pipeline as a Prefect flow on the embedded MNIST data
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flows.pipeline

test: install           ## the whole test suite (what CI runs)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

test-fast: install      ## the suite without the slow end-to-end tests
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow"

repro: install          ## the same pipeline with plain DVC
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

server: install         ## a local Prefect server on 127.0.0.1:4200 (foreground)
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200 --analytics-off

serve: install          ## serve the pipeline as a deployment with a cron schedule (needs `make server`)
	PATH="$(CURDIR)/$(BIN):$$PATH" PREFECT_API_URL=http://127.0.0.1:4200/api $(BIN)/python -m flows.serve $(SERVE_ARGS)

gpu-kit: install        ## the wheels the lent GPU machine lacks, into .gpu-kit/ (needs PyPI; docs/gpu.md "On a GPU")
	$(BIN)/python -m tools.gpu_kit .gpu-kit

bench: install          ## energy, model-energy, training, reconstruction, SD, side-by-side and forecast benchmarks, quick sizes (figures and ratios)
	$(BIN)/python benchmarks/bench_energy.py --quick
	$(BIN)/python benchmarks/bench_model_energy.py --quick
	$(BIN)/python benchmarks/bench_train.py --quick
	$(BIN)/python benchmarks/bench_reconstruction.py --quick
	$(BIN)/python benchmarks/bench_sd.py --quick
	$(BIN)/python benchmarks/bench_side_by_side.py --quick --runs 2
	$(BIN)/python benchmarks/bench_forecast.py --quick

clean-env:
	rm -rf $(VENV)
