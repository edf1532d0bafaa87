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

# Benchmarks report figures, never pass/fail on timing.
bench:
	$(GO) test -run '^$$' -bench . -benchtime=1000000x ./actor

FUZZTIME ?= 60s
fuzz:
	@echo "no fuzz targets yet"
