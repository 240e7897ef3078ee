# Habits as targets; `make` alone lists them. Targets that need Postgres or the Redis
# Cluster bring them up first through scripts/ (idempotent, fast when already running).

GO ?= go
# Flags for cmd/ticketbench, e.g. make bench BENCH_ARGS='-duration 4s -only get,list' (-h lists them).
BENCH_ARGS ?=

# Every target that runs ticketd (the server and its tasks) runs it through this one
# definition: scripts/local-env.sh gives it the environment (.env, then the local
# Postgres and Redis Cluster), so a task reaches the services the server uses.
TICKETD = scripts/local-env.sh $(GO) run ./cmd/ticketd

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-13s %s\n", $$1, $$2}'

.PHONY: test
test: ## Run all tests (race detector, fuzz seed corpora) against real Postgres and Redis Cluster
	@# First the race-enabled build of everything, each package named as it compiles, with
	@# full parallelism: minutes on a fresh machine (go test is silent meanwhile), seconds
	@# once cached. The two test steps share its build flags (-race), so they only link.
	@# Tests named TestDisruptive* stop the shared Redis Cluster (SIGSTOP): they run first,
	@# alone (only cmd/ticketd has them), then everything else in parallel.
	$(MAKE) --no-print-directory lint-spec
	GO=$(GO) scripts/test-build.sh
	@echo "make test: step 1 of 2: the TestDisruptive* tests alone (they pause the shared Redis Cluster)"
	TICKETD_DISRUPTIVE_TESTS=1 scripts/test-env.sh $(GO) test -race -count=1 -timeout 5m -p 1 -run 'Disruptive' ./cmd/ticketd/
	@echo "make test: step 2 of 2: every other test, packages in parallel (about 1-2 minutes; a line per package as it ends)"
	scripts/test-env.sh $(GO) test -race -count=1 -timeout 12m -skip 'Disruptive' ./...

.PHONY: run
run: ## Run ticketd locally against Postgres and the Redis Cluster (reads .env if present); prints an admin token
	@# An admin token for the README's curl examples (valid 24 h; -revoke-token ends it).
	@token=$$(LOG_LEVEL=warn $(TICKETD) -create-token -role admin -name 'make run' -ttl 24h); \
		printf '\nAdmin token (24 h):\n  export TOKEN=%s\n\n' "$$token" >&2
	$(TICKETD)

.PHONY: build
build: ## Build a static binary into bin/ticketd
	CGO_ENABLED=0 $(GO) build -o bin/ticketd ./cmd/ticketd

# gofmt from the same toolchain as $(GO), not whatever is first on PATH. testdata is
# skipped: it may hold deliberately odd Go files, and go vet ignores it as well.
.PHONY: lint
lint: ## Check gofmt and run go vet
	@gofmt=$$($(GO) env GOROOT)/bin/gofmt; \
	unformatted=$$(find . -name '*.go' -not -path './vendor/*' -not -path '*/testdata/*' -print0 | xargs -0 -r "$$gofmt" -l); \
	if [[ -n $$unformatted ]]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# The document as served (aliases included), linted by Redocly CLI's recommended rules,
# warnings as errors (.redocly.yaml says which rules are off and why). The first run
# installs the pinned linter into .tools/ (scripts/tools.sh); later runs are offline.
.PHONY: lint-spec
lint-spec: ## Lint the served OpenAPI document (Redocly CLI, recommended-strict)
	scripts/tools.sh redocly
	@mkdir -p .tools
	$(GO) run ./httpapi/internal/openapijson .tools/openapi.json
	REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
		.tools/npm/node_modules/.bin/redocly lint --config .redocly.yaml --format=stylish .tools/openapi.json

.PHONY: bench
bench: ## Run the load benchmark tool (cmd/ticketbench, wrk); results in bench/out/ (git-ignored)
	scripts/tools.sh wrk
	scripts/test-env.sh $(GO) run ./cmd/ticketbench $(BENCH_ARGS)

# A deliberate step: the README's table changes only when someone asks for it.
.PHONY: bench-table
bench-table: ## Copy the last bench run's table (bench/out/latest.json) into README.md
	$(GO) run ./cmd/ticketbench -table-from bench/out/latest.json

.PHONY: cluster-up
cluster-up: ## Start (or reuse) the local 3-master Redis Cluster on 7001-7003
	scripts/redis-cluster.sh start

.PHONY: cluster-down
cluster-down: ## Stop the local Redis Cluster
	scripts/redis-cluster.sh stop

.PHONY: migrate
migrate: ## Apply database migrations (ticketd -migrate), with make run's environment
	$(TICKETD) -migrate

.PHONY: rebuild
rebuild: ## Rebuild the read models (ticketd -rebuild-projections), with make run's environment
	$(TICKETD) -rebuild-projections

.PHONY: history
history: ## Print a ticket's history: make history ID=<ticket id> [JSON=1], with make run's environment
	@[[ -n '$(ID)' ]] || { echo 'make history needs the ticket: make history ID=<ticket id> [JSON=1]' >&2; exit 2; }
	$(TICKETD) -history '$(ID)'$(if $(JSON), -json)
