#!/usr/bin/env bash
# Builds the natsmesh image without pulling anything: static binaries
# (CGO_ENABLED=0, nats-server from its Go module at the version go.mod pins)
# into a folder, then a FROM scratch image from them.
#
#   deploy/docker/build-image.sh [TAG] [DIST]     TAG defaults to natsmesh:local
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-natsmesh:local}
dist=${2:-$root/dist/image}
rm -rf "$dist"
mkdir -p "$dist/data"
cd "$root"
export CGO_ENABLED=0 GOOS=linux
go build -trimpath -ldflags='-s -w' -o "$dist/" ./cmd/runner ./cmd/shardmgr ./cmd/gateway ./cmd/meshctl
go build -trimpath -ldflags='-s -w' -o "$dist/nats-server" github.com/nats-io/nats-server/v2
# Quiet unless it fails (the legacy builder warns on every build).
if ! out=$(docker build -q -f deploy/docker/Dockerfile.scratch -t "$tag" "$dist" 2>&1); then
	echo "$out" >&2
	exit 1
fi
echo "built image $tag"
