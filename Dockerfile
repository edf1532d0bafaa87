# The natsmesh image, built from source (needs to pull golang:1.26):
#
#   docker build -t natsmesh:local .
#
# It is the same image as deploy/docker/build-image.sh (make image) builds
# from binaries compiled on the host without pulling anything: one FROM
# scratch image with every binary, each service choosing its command
# (/bin/runner, /bin/shardmgr, /bin/gateway, /bin/meshctl, /bin/nats-server).
# docker-compose.yml and deploy/k8s use it.
#
# To ship your own entities, build your runner binary (a main that registers
# your behaviors, like cmd/runner) in the build stage and copy it instead.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/runner ./cmd/shardmgr ./cmd/gateway ./cmd/meshctl \
 && go build -trimpath -ldflags='-s -w' -o /out/nats-server github.com/nats-io/nats-server/v2 \
 && mkdir -p /out/data

FROM scratch
COPY --from=build /out/nats-server /out/runner /out/shardmgr /out/gateway /out/meshctl /bin/
# JetStream's store; owned by the unprivileged user so that a volume
# mounted here (initialised from the image) is writable.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
EXPOSE 4222 6222 8222 8080 8081
