# spdy-origin: build, demo and test entry points. See README.md and DEVELOPERS.md.
#
#   make demo    Caddy + agent on localhost over HTTPS (internal CA); Ctrl-C stops both
#   make test    go test -race ./... and the integration suite against bin/
#   make build   bin/caddy (from xcaddy.json) and bin/spdy-origin-agent

GO      ?= go
BIN     := bin
CADDY   := $(BIN)/caddy
AGENT   := $(BIN)/spdy-origin-agent

# Extra flags for `go test` (e.g. make test GOTESTFLAGS='-run TestX -v').
GOTESTFLAGS ?=
# Unit tests take seconds per package; a hung test should not eat CI's budget.
GOTESTTIMEOUT ?= 5m

.PHONY: all build caddy agent demo test unit-test integration-test interop-deps \
	bench check clean dist dist-check verify-units

all: build

build: caddy agent

# buildcaddy skips the build when xcaddy.json, go.mod, go.sum and the plugin's
# sources are unchanged (stamp: bin/caddy.stamp), so this target is cheap to
# depend on. A cold build takes ~4 minutes on 2 cores.
caddy:
	$(GO) run ./internal/buildcaddy -config xcaddy.json -o $(CADDY)

# go build is incremental on its own. The version and commit come from git,
# as in make dist (spdy-origin-agent --version, spdy_origin_agent_build_info).
GIT_VERSION := $(shell git describe --tags --always --dirty --match 'v*' 2>/dev/null || echo devel)
GIT_COMMIT  := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
AGENT_LDFLAGS := -X github.com/spdy-origin/spdy-origin/agent.version=$(GIT_VERSION) \
	-X github.com/spdy-origin/spdy-origin/agent.commit=$(GIT_COMMIT)

agent:
	$(GO) build -ldflags "$(AGENT_LDFLAGS)" -o $(AGENT) ./cmd/spdy-origin-agent

# Release binaries into dist/out/ with SHA256SUMS (scripts/dist.sh): the agent
# for linux amd64/arm64/armv7, darwin/arm64, windows/amd64; Caddy with the module
# for linux amd64/arm64. dist-check builds again from a fresh clone at another
# path and requires identical SHA256SUMS (DIST_CHECK_COLD=1: empty build cache).
dist:
	bash scripts/dist.sh

dist-check:
	bash scripts/dist.sh --check

# systemd-analyze verify and security on dist/systemd/*.service (no running
# systemd needed; apt-get install -y systemd for the tool).
verify-units:
	bash scripts/verify-units.sh

demo: build
	bash scripts/demo.sh

test: unit-test integration-test

unit-test: interop-deps
	$(GO) test -race -timeout $(GOTESTTIMEOUT) $(GOTESTFLAGS) ./...

integration-test: build
	bash integration-tests/run.sh

# The node-spdy peer used by the spdy interop tests (spdy/interop, owned by
# the interop tests). Installs only when package.json or the lock file is
# newer than node_modules.
interop-deps:
	@if [ -f spdy/interop/package.json ]; then \
		if ! command -v npm >/dev/null 2>&1; then \
			echo "interop-deps: npm not found; node interop tests will not be able to run" >&2; \
		elif [ ! -d spdy/interop/node_modules ] \
			|| [ spdy/interop/package.json -nt spdy/interop/node_modules ] \
			|| { [ -f spdy/interop/package-lock.json ] && [ spdy/interop/package-lock.json -nt spdy/interop/node_modules ]; }; then \
			if [ -f spdy/interop/package-lock.json ]; then \
				npm ci --prefix spdy/interop --no-audit --no-fund; \
			else \
				npm install --prefix spdy/interop --no-audit --no-fund; \
			fi && touch spdy/interop/node_modules; \
		fi; \
	fi

bench: build
	$(GO) run ./bench

# staticcheck, pinned, installed into bin/ on first use (module proxy only).
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(BIN)/staticcheck-$(STATICCHECK_VERSION)

$(STATICCHECK):
	@mkdir -p $(BIN)
	GOBIN=$(CURDIR)/$(BIN) GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(BIN)/staticcheck $@

# gofmt, go vet (also for the other release systems: a file that builds
# only on Linux shows there), a tidy go.mod and staticcheck, as CI runs them.
check: $(STATICCHECK)
	@out=$$(find . -name '*.go' -not -path '*/node_modules/*' -not -path './.git/*' | xargs gofmt -l); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=windows $(GO) vet ./...
	GOOS=darwin $(GO) vet ./...
	$(GO) mod tidy -diff
	$(STATICCHECK) ./...

clean:
	rm -rf $(BIN) .demo dist/out dist/cache
