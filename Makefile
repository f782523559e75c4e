# Every target creates the virtual environment it needs (uv, from the lock file).
SHELL := /bin/bash
.DEFAULT_GOAL := help
export BENTOML_DO_NOT_TRACK := true

# The interpreter of .venv: python3 unless PYTHON names another (3.11 to 3.13; checked by
# scripts/bootstrap.sh, which also finds uv: the one on PATH, else .tools/uv/, a virtual
# environment of its own made on first use). Nothing is installed into the system Python and
# uv never downloads an interpreter.
PYTHON ?= python3
UV ?=
VENV := .venv
MLOPS := $(VENV)/bin/mlops
CONFIGS ?= configs

.PHONY: help
help: ## List the targets with what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# One stamp per PYTHON, so that another PYTHON syncs .venv again (uv recreates it).
SYNCED := $(VENV)/.synced-$(subst /,_,$(PYTHON))

$(SYNCED): pyproject.toml uv.lock scripts/bootstrap.sh
	@set -e; export PYTHON="$(PYTHON)" UV="$(UV)"; \
	python="$$(bash scripts/bootstrap.sh --print python)"; \
	uv="$$(bash scripts/bootstrap.sh --print uv)"; \
	echo "$$uv sync --frozen --python $$python"; \
	UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT="$(VENV)" "$$uv" sync --frozen --python "$$python"
	@rm -f $(VENV)/.synced*
	@touch $@

.PHONY: venv
venv: $(SYNCED) ## Create .venv from uv.lock (runs by itself when needed)

.PHONY: demo
demo: venv ## The main job: train → validate → package → canary rollout on local staging (in .mlops/demo)
	$(VENV)/bin/python scripts/demo.py --env staging

.PHONY: train-validate
train-validate: venv ## Train and validate the configured model in place (.mlops/results, .mlops/reports)
	$(MLOPS) config check --configs $(CONFIGS)
	$(MLOPS) train --configs $(CONFIGS)
	$(MLOPS) validate --configs $(CONFIGS)

.PHONY: rollout
rollout: venv ## Roll the packaged version out to local staging (fast local canary profile)
	$(MLOPS) rollout --env staging --configs $(CONFIGS) --canary-config configs/variants/local-demo/canary.yaml

.PHONY: test
test: venv ## Run every test tier (unit, integration, e2e); MARKERS=unit narrows it
	$(VENV)/bin/pytest $(if $(MARKERS),-m "$(MARKERS)")

.PHONY: test-unit
test-unit: venv ## Run the fast unit tests only
	$(VENV)/bin/pytest -m unit

.PHONY: test-e2e
test-e2e: venv ## Run the e2e tier (containers; needs scripts/install-system-deps.sh)
	$(VENV)/bin/pytest -m e2e

.PHONY: system-deps
system-deps: ## Install the system packages containers need (podman, buildah, runc, wrk; root)
	bash scripts/install-system-deps.sh

.PHONY: base-image
base-image: ## Make the air-gapped Python base image from Debian packages (cached)
	scripts/make-base-image.sh --extra-ca /usr/local/share/ca-certificates

.PHONY: judge-image
judge-image: venv base-image ## Build the judge Job's image (mlops CLI from uv.lock) from HEAD (deploy/k8s/)
	deploy/k8s/build-judge-image.sh $(if $(JUDGE_IMAGE),--tag $(JUDGE_IMAGE))

.PHONY: image
image: venv ## Build the OCI image of the packaged Bento (.mlops/results/image.json)
	$(MLOPS) image --configs $(CONFIGS)

.PHONY: env-up env-down traffic
env-up: venv ## Start or reconcile the local staging environment (deploy/staging.yaml)
	$(MLOPS) env up --env staging
env-down: venv ## Stop the local staging environment
	$(MLOPS) env down --env staging
.PHONY: agent
agent: venv ## Run the pull-based agent for ENV (default staging) in the foreground (docs/staging-host.md)
	$(MLOPS) agent --env $(or $(ENV),staging)
traffic: venv ## 30 s of clean staging traffic through the gateway
	$(MLOPS) traffic --env staging --rate 50 --concurrency 8 --duration 30

.PHONY: monitor
monitor: venv ## Monitor the release serving in ENV (default staging): drift, quality; exit 1 = act
	$(MLOPS) monitor --env $(or $(ENV),staging) --window $(or $(WINDOW),24h)

.PHONY: rollback
rollback: venv ## Roll back the canary of ENV (default staging) now, no analysis
	$(MLOPS) rollback --env $(or $(ENV),staging)

.PHONY: workflows
workflows: venv ## Run the PR and merge workflows locally with act (scratch clone, offline)
	scripts/run-workflows.sh all

.PHONY: lint
lint: venv ## Run every pre-commit hook on all files
	$(VENV)/bin/pre-commit run --all-files --show-diff-on-failure

.PHONY: bench
bench: venv ## Benchmark train + validate of the example classifier (median of 3 runs)
	$(VENV)/bin/python benchmarks/train_validate.py --runs 3

.PHONY: package
package: venv ## Package the `challenger` version into a Bento (.mlops/results/package.json)
	$(MLOPS) package --configs $(CONFIGS) --alias challenger

.PHONY: bench-serving
bench-serving: venv ## Bento as % of the floor (uvicorn+orjson+numpy) at c1/c32, 3 runs (.mlops/benchmarks/serving.md)
	$(VENV)/bin/python benchmarks/serving.py --runs 3 --duration 15

.PHONY: bench-log-cost
bench-log-cost: venv ## The prediction log's parts priced on one core, each copy alone in turn: off, queued only, on (.mlops/benchmarks/serving_log_cost.md)
	$(VENV)/bin/python benchmarks/serving_log_cost.py --mode alternate --rounds 8 --duration 10

.PHONY: bench-canary
bench-canary: venv ## Canary judge vs a Flagger-style rule: false rollbacks, detection, requests to decide
	$(VENV)/bin/python benchmarks/decision_quality.py

.PHONY: bench-canary-live
bench-canary-live: venv ## Live rollouts (A/A, half with a busy core; latency/error/accuracy faults) through the real gateway (.mlops/bench/canary_live.md)
	$(VENV)/bin/python benchmarks/canary_live.py --aa-runs $(or $(AA_RUNS),30) --fault-runs $(or $(FAULT_RUNS),10)

.PHONY: bench-demo-repeat
bench-demo-repeat: venv ## make demo 10 times in a row, every other run with a busy core (.mlops/bench/demo_repeat.md)
	$(VENV)/bin/python benchmarks/demo_repeat.py --runs $(or $(RUNS),10)

.PHONY: clean
clean: ## Remove generated state (.mlops/), the virtual environment and the bootstrapped uv (.tools/)
	rm -rf .mlops $(VENV) .tools
