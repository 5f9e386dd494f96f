# Two commands a user needs: `make run DATA=<dataset folder>` and `make test`.
# Both create or update .venv by themselves when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
PYTEST_ARGS ?=
# e.g. SERVE_ARGS=--from-workspace to serve this workspace's model instead of the registry champion
SERVE_ARGS ?=

# Telemetry off for every tool of the stack.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
# MLflow's "Downloading artifacts" bars would interleave with the stages' own progress.
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
# MLflow's own INFO lines (creating its tables, validating input examples): warnings still show.
export MLFLOW_LOGGING_LEVEL := WARNING
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
# dvc.yaml's commands (`pneumo ...`) come from the project's virtual environment.
export PATH := $(BIN):$(PATH)

.PHONY: venv vendor run test lint bench bench-serve serve clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable ".[dev]"
	@# Some machines set PYTHONDONTWRITEBYTECODE; without .pyc files every run recompiles the stack.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	@touch $(STAMP)

venv: $(STAMP)

vendor: $(STAMP)  ## the npm packages the HTML reports load (Vega, Bootstrap...), into vendor/
	$(BIN)/python -m pneumo.web_assets > /dev/null

run: $(STAMP)  ## the main job: the Prefect retrain flow (validate, dvc repro, gate, register, package)
	@# The reports' local Vega/Bootstrap copies: without npm they fall back to CDN links (a warning).
	-@$(BIN)/python -m pneumo.web_assets > /dev/null || echo "make vendor failed: HTML reports will need the internet"
	@if [ -n "$(DATA)" ]; then $(BIN)/pneumo params set data.root="$(DATA)"; fi
	$(BIN)/pneumo retrain

test: $(STAMP) vendor  ## lint + the whole test suite (slow end-to-end tests included)
	$(BIN)/ruff check pneumo flows serving tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check pneumo flows serving tests bench
	$(BIN)/ruff format --check pneumo flows serving tests bench

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py

bench-serve: $(STAMP)  ## requests/s and latency of /predict (bounded; starts and stops its own servers)
	$(BIN)/python bench/serve.py

serve: $(STAMP)  ## serve the registry champion over HTTP (packaged into a Bento first if needed)
	$(BIN)/pneumo serve $(SERVE_ARGS)

clean-venv:
	rm -rf $(VENV)
