# natsmesh developer targets. `make test` is what CI runs (.ci/run).
GO ?= go
PKGS ?= ./...
TEST_FLAGS ?= -race -count=1 -shuffle=on -timeout=20m

.PHONY: test vet fmt-check tidy-check lint bench fuzz examples build

test: fmt-check vet
	$(GO) test $(TEST_FLAGS) $(PKGS)

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

tidy-check:
	$(GO) mod tidy -diff

lint: fmt-check vet tidy-check

build:
	$(GO) build ./...

examples:
	$(GO) build ./examples/...

# Benchmarks report figures, never pass/fail on timing. The harness measures
# raw NATS and the mesh in one run on one embedded server (ratios matter,
# absolute figures drift between machines).
bench:
	$(GO) test -run '^$$' -bench . -benchtime=1000000x ./actor
	$(GO) test -run '^$$' -bench . -benchtime=20000x ./mesh
	$(GO) test -run '^$$' -bench . ./internal/assign
	$(GO) run ./test/bench

FUZZTIME ?= 60s
FUZZ_TARGETS = ./mesh:FuzzIDHeader ./mesh:FuzzParseCall ./mesh:FuzzErrorEnvelope ./mesh:FuzzCodecs ./internal/assign:FuzzCompute
fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; echo "== $$pkg $$fn"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done
