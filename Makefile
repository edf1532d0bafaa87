# natsmesh developer targets. `make test` is what CI runs (.ci/run).
GO ?= go
PKGS ?= ./...
TEST_FLAGS ?= -race -count=1 -shuffle=on -timeout=20m

.PHONY: test vet fmt-check tidy-check staticcheck lint bench fuzz examples build chaos chaos-short

test: fmt-check vet
	$(GO) test $(TEST_FLAGS) $(PKGS)

vet:
	$(GO) vet $(PKGS)
	$(GO) vet -tags chaos ./test/chaos/

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

tidy-check:
	$(GO) mod tidy -diff

# staticcheck (pinned in go.mod as a tool) with every check on
# (staticcheck.conf), package-doc checks included.
staticcheck:
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags chaos ./test/chaos/...

lint: fmt-check vet tidy-check staticcheck

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
	$(GO) test -run '^$$' -bench . ./mesh/internal/assign
	$(GO) test -run '^$$' -bench ReminderFiring -benchtime=1x ./reminder
	$(GO) test -run '^$$' -bench . -benchtime=2s ./eventsourced ./durablestate
	$(GO) run ./test/bench
	$(GO) run ./test/bench -only persist -runners 3

FUZZTIME ?= 60s
FUZZ_TARGETS = ./mesh/protocol:FuzzIDHeader ./mesh/protocol:FuzzParseCall ./mesh/protocol:FuzzErrorEnvelope ./mesh/protocol:FuzzCodecs \
	./mesh/protocol:FuzzStoredReply ./mesh:FuzzShardKey ./mesh:FuzzAssignment ./mesh:FuzzRegistryRecord \
	./mesh:FuzzAssignmentRecord ./mesh:FuzzStreamControl ./mesh/protocol:FuzzParseSubjects ./mesh/protocol:FuzzReplyKey \
	./mesh:FuzzPersistedMessage ./jetstream:FuzzLeaseValue ./jetstream:FuzzLeaseHeaders \
	./jetstream:FuzzWatchEvent ./mesh/internal/assign:FuzzCompute ./jetstream:FuzzToken \
	./internal/cronexpr:FuzzNext ./mesh/protocol:FuzzStrictJSON
fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; echo "== $$pkg $$fn"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

# A local cluster as processes (3 NATS servers, shard manager, 3 runners,
# gateway on :8080), for users without Docker: deploy/local/cluster.sh.
.PHONY: cluster cluster-down
cluster:
	./deploy/local/cluster.sh up

cluster-down:
	./deploy/local/cluster.sh down

# The FROM scratch image of docker-compose.yml (natsmesh:local), from static
# binaries built here: nothing is pulled. `docker build .` builds the same
# image from source.
.PHONY: image
image:
	./deploy/docker/build-image.sh natsmesh:local

# The chaos suite (test/chaos, docs/reliability.md): a 3-server NATS cluster,
# shard managers and runners as processes, load, and faults drawn from a
# seed. chaos-short is CI's fixed-seed two-minute run; chaos is the soak run
# with a random seed (printed; rerun one with CHAOS_FLAGS=-chaos.seed=N).
# Both fail on any invariant violation (NATSMESH_TOLERATE_KNOWN_BUGS=1
# tolerates those matching a fixed bug's signature, to bisect old revisions).
# chaos-containers runs docker-compose.yml under load and faults its containers (docker pause, network disconnect, kill; test/compose, needs Docker).
CHAOS_DURATION ?= 20m
CHAOS_FLAGS ?=
CHAOS_TEST = $(GO) test -tags chaos -run '^TestChaos$$' -count=1 -v ./test/chaos
chaos-short:
	$(CHAOS_TEST) -timeout 20m -chaos.seed=1 -chaos.duration=2m $(CHAOS_FLAGS)
chaos:
	$(CHAOS_TEST) -timeout 0 -chaos.duration=$(CHAOS_DURATION) $(CHAOS_FLAGS)

.PHONY: chaos-containers
chaos-containers:
	NATSMESH_COMPOSE_FAULTS=1 $(GO) test -run '^TestComposeFaults$$' -count=1 -v -timeout 45m ./test/compose
