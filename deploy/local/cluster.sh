#!/usr/bin/env bash
# A natsmesh cluster as local processes, for users without Docker:
#
#   deploy/local/cluster.sh up     (make cluster)
#   deploy/local/cluster.sh down   (make cluster-down)
#   deploy/local/cluster.sh status
#
# "up" builds the binaries (nats-server from its Go module, at the version
# go.mod pins), then starts on loopback: three nats-server processes forming
# a JetStream cluster, one shard manager, three runners hosting the example
# Counter, and the HTTP gateway. Buckets and streams are R3. Every process
# writes its log to $CLUSTER_DIR/logs and its pid to $CLUSTER_DIR/pids;
# "down" stops exactly those processes (SIGTERM, then SIGKILL after a grace
# period) and removes the state.
#
# Settings (environment):
#   CLUSTER_DIR        state folder (default .data/cluster)
#   CLUSTER_NATS_PORT  first NATS client port; the servers use it and the next
#                      two, cluster routes +2000, monitoring +4000 (default 4222)
#   CLUSTER_HTTP_PORT  gateway port (default 8080); /healthz and /readyz of the
#                      gateway, shard manager and runners r1-r3 on the next five
#   CLUSTER_READY_TIMEOUT  seconds to wait for the first call (default 90)
#   CLUSTER_BIN        a folder holding runner, shardmgr, meshctl, gateway and
#                      nats-server already built (outside CLUSTER_DIR): "up"
#                      uses them instead of building into $CLUSTER_DIR/bin
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${CLUSTER_DIR:-$root/.data/cluster}
case $dir in /*) ;; *) dir=$root/$dir ;; esac
nats_port=${CLUSTER_NATS_PORT:-4222}
http_port=${CLUSTER_HTTP_PORT:-8080}
ready_timeout=${CLUSTER_READY_TIMEOUT:-90}
bin=${CLUSTER_BIN:-$dir/bin} logs=$dir/logs pids=$dir/pids
servers=(n1 n2 n3)
runners=(r1 r2 r3)

urls() {
	local u=() i
	for i in 0 1 2; do u+=("nats://127.0.0.1:$((nats_port + i))"); done
	local IFS=,
	echo "${u[*]}"
}

# Lease timings for R3 storage: a NATS server's crash costs a Raft election
# of several seconds, which leases must outlast (docs/operations.md).
mesh_flags=(-nats "$(urls)" -replicas 3 -shard-lock-expiration 12s -shard-lock-refresh-interval 3s)

die() { echo "cluster: $*" >&2; exit 1; }

# fail MESSAGE: a start that went wrong stops what it started.
fail() {
	echo "cluster: $*; logs in $logs; stopping what started" >&2
	down >&2
	exit 1
}

# exe_of PID: the program a process runs.
exe_of() {
	if [ -d /proc ]; then readlink "/proc/$1/exe" 2>/dev/null || true; else ps -o comm= -p "$1" 2>/dev/null || true; fi
}

# alive NAME: the process of NAME's pid file runs and is still the binary we
# started (a pid reused by another program does not count).
alive() {
	local f=$pids/$1.pid pid
	[ -f "$f" ] || return 1
	pid=$(cat "$f")
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	[ "$(exe_of "$pid")" = "$(cat "$pids/$1.exe")" ] || return 1
}

# start NAME BINARY ARGS...: start a process in the background, detached
# from this shell's session, its output in logs/NAME.log.
start() {
	local name=$1 exe=$bin/$2
	shift 2
	local detach=()
	command -v setsid >/dev/null && detach=(setsid) # out of the terminal's session
	"${detach[@]}" "$exe" "$@" >>"$logs/$name.log" 2>&1 </dev/null &
	local pid=$! want
	want=$(cd "$(dirname "$exe")" && pwd -P)/$(basename "$exe")
	echo "$pid" >"$pids/$name.pid"
	echo "$want" >"$pids/$name.exe"
	# Until the fork has exec'd the binary, the pid runs bash or setsid.
	wait_until 5 "$name to start" runs "$pid" "$want"
}

runs() { [ "$(exe_of "$1")" = "$2" ]; } # runs PID EXE

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_until() { # SECONDS WHAT COMMAND...
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
		sleep 0.2 # poll interval
	done
}

up() {
	if [ -d "$pids" ] && ls "$pids"/*.pid >/dev/null 2>&1; then
		for f in "$pids"/*.pid; do
			alive "$(basename "$f" .pid)" && die "already running (state in $dir): run 'make cluster-down' first"
		done
	fi
	for p in $nats_port $((nats_port + 1)) $((nats_port + 2)) $((nats_port + 2000)) $((nats_port + 2001)) $((nats_port + 2002)) \
		$((nats_port + 4000)) $((nats_port + 4001)) $((nats_port + 4002)) $(seq "$http_port" $((http_port + 5))); do
		port_free "$p" || die "port $p is in use (set CLUSTER_NATS_PORT / CLUSTER_HTTP_PORT)"
	done
	if [ -n "${CLUSTER_BIN:-}" ]; then
		local real_bin real_dir
		real_bin=$(cd "$bin" 2>/dev/null && pwd -P) || die "CLUSTER_BIN $bin is not a folder"
		real_dir=$(mkdir -p "$dir" && cd "$dir" && pwd -P) || die "cannot create $dir"
		case $real_bin/ in "$real_dir"/*) die "CLUSTER_BIN $bin is inside CLUSTER_DIR $dir, which 'up' empties" ;; esac
		for b in runner shardmgr meshctl gateway nats-server; do
			[ -x "$bin/$b" ] || die "CLUSTER_BIN $bin has no executable $b"
		done
	fi
	rm -rf "$dir"
	mkdir -p "$bin" "$logs" "$pids"

	if [ -z "${CLUSTER_BIN:-}" ]; then
		echo "building binaries into $bin"
		(cd "$root" && go build -trimpath -o "$bin/" ./cmd/runner ./cmd/shardmgr ./cmd/meshctl ./cmd/gateway &&
			go build -trimpath -o "$bin/nats-server" github.com/nats-io/nats-server/v2) || die "build failed"
	fi

	local i name routes
	for i in 0 1 2; do
		name=${servers[$i]}
		routes=()
		for j in 0 1 2; do [ "$j" = "$i" ] || routes+=("nats-route://127.0.0.1:$((nats_port + 2000 + j))"); done
		mkdir -p "$dir/$name"
		cat >"$dir/$name.conf" <<-EOF
			server_name: $name
			listen: 127.0.0.1:$((nats_port + i))
			http: 127.0.0.1:$((nats_port + 4000 + i))
			jetstream { store_dir: "$dir/$name", max_memory_store: 256MB, max_file_store: 2GB }
			cluster {
			  name: natsmesh
			  listen: 127.0.0.1:$((nats_port + 2000 + i))
			  routes: [ $(IFS=,; echo "${routes[*]}") ]
			}
		EOF
		start "$name" nats-server -c "$dir/$name.conf"
	done
	for i in 0 1 2; do
		# /healthz answers 200 once JetStream is up with a meta leader.
		wait_until 60 "nats server ${servers[$i]}" curl -fsS "http://127.0.0.1:$((nats_port + 4000 + i))/healthz"
	done

	local ops=$((http_port + 1)) # health ports: gateway, shardmgr, r1, r2, r3
	start gateway gateway "${mesh_flags[@]}" -listen "127.0.0.1:$http_port" -http "127.0.0.1:$ops" -persisted Counter.Deposit
	start shardmgr shardmgr "${mesh_flags[@]}" -http "127.0.0.1:$((ops + 1))"
	for i in 0 1 2; do
		start "${runners[$i]}" runner "${mesh_flags[@]}" -id "${runners[$i]}" -http "127.0.0.1:$((ops + 2 + i))"
	done
	for p in $(seq $ops $((ops + 4))); do
		wait_until "$ready_timeout" "/readyz on :$p" curl -fsS "http://127.0.0.1:$p/readyz"
	done

	local url=http://127.0.0.1:$http_port
	wait_until "$ready_timeout" "a first call through the gateway" \
		curl -fsS -X POST "$url/v1/Counter/hello/GetValue"
	cat <<-EOF

		natsmesh cluster is up (state in $dir):
		  NATS      $(urls)  (JetStream R3, monitoring on :$((nats_port + 4000))-$((nats_port + 4002)))
		  processes gateway on $url, shardmgr, runners ${runners[*]}
		  health    /healthz and /readyz on :$ops (gateway), :$((ops + 1)) (shardmgr), :$((ops + 2))-$((ops + 4)) (runners)
		  logs      $logs

		Call an entity through the gateway:
		  curl $url/v1/Counter/user-123/Increment -H 'Content-Type: application/json' -d '{"amount":5}'
		  curl -X POST $url/v1/Counter/user-123/GetValue
		  curl $url/v1/Counter/user-123/Deposit -H 'Content-Type: application/json' -H 'Idempotency-Key: order-1' -d '{"amount":10}'
		or with meshctl:
		  $bin/meshctl -nats $(urls) call Counter user-123 Increment '{"amount":1}'

		Stop it all with: make cluster-down
	EOF
}

# stop NAMES...: SIGTERM each live process, wait up to $grace seconds for
# all, then SIGKILL the rest.
stop() {
	local grace=$1 name
	shift
	local live=()
	for name in "$@"; do
		if alive "$name"; then
			kill -TERM "$(cat "$pids/$name.pid")" 2>/dev/null || true
			live+=("$name")
		fi
	done
	local deadline=$((SECONDS + grace))
	for name in "${live[@]}"; do
		while alive "$name" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done # poll interval
		if alive "$name"; then
			echo "cluster: $name did not stop within ${grace}s: killing it" >&2
			kill -KILL "$(cat "$pids/$name.pid")" 2>/dev/null || true
		fi
	done
	for name in "${live[@]}"; do
		while alive "$name"; do sleep 0.1; done # SIGKILLed: gone at once
	done
	for name in "$@"; do rm -f "$pids/$name.pid" "$pids/$name.exe"; done
}

down() {
	[ -d "$pids" ] || { echo "cluster: nothing to stop ($dir has no pids)"; return 0; }
	# Outside in: the gateway, then the runners (which hand their shards
	# off and finish their entities), the shard manager, NATS last.
	stop 35 gateway
	stop 30 "${runners[@]}"
	stop 10 shardmgr
	stop 15 "${servers[@]}"
	local left
	left=$(ls "$pids"/*.pid 2>/dev/null || true)
	[ -z "$left" ] || die "pid files left: $left"
	echo "cluster stopped; nothing left running (logs kept in $logs until the next 'make cluster')"
}

status() {
	[ -d "$pids" ] || { echo "no cluster ($dir)"; return 0; }
	local f name
	for f in "$pids"/*.pid; do
		[ -e "$f" ] || continue
		name=$(basename "$f" .pid)
		if alive "$name"; then echo "$name running (pid $(cat "$f"))"; else echo "$name NOT running"; fi
	done
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*) die "usage: $0 up|down|status" ;;
esac
