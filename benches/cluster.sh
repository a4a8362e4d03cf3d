#!/usr/bin/env bash
# Cluster fan-out benchmark (issue 7): N corecast nodes sharing one room through one
# redis-server, SUBS WebSocket subscribers per node, one publisher at fixed rates;
# and the single-node figures to compare with. Everything on 127.0.0.0/8.
#
#   benches/cluster.sh [--scenarios "cluster single single-redis"] [--rates "10 50 200"]
#                      [--runs 3] [--subs 15000] [--nodes 3] [--duration 10] [--warmup 3]
#                      [--drain 5] [--size 64] [--ramp-budget 25] [--out DIR]
#
# Scenarios (each gets fresh servers; every rate x run gets fresh loadgen processes):
#   cluster       --nodes nodes (default 3) with a `cluster:` section, one redis-server,
#                 --subs subscribers on each node (45,000 with the defaults)
#   single        one node, no cluster section, --subs subscribers
#   single-redis  one node WITH the cluster section (every publish makes the Redis
#                 round trip): the cost of the Redis hop alone
#
# Processes and pinning (the reference machine has 2 cores):
#   core 0: every corecast node (`--shards 1` each) and redis-server
#   core 1: every loadgen process
# One loadgen process per node holds that node's subscribers (`fanout --listen-only`:
# it times and counts messages another process publishes, with payload timestamps on
# the machine-wide CLOCK_MONOTONIC); one more loadgen process is the publisher (a
# member of the room on the first node). All of them get the same `--start-at`
# (wall-clock second), so they share one warmup and one measured window.
# The subscriber process of node k (1, 2, 3) binds its sockets to 127.0.k.1..3
# (5,000 per address); the publisher binds to 127.0.99.1.
#
# Output: DIR (default reports/cluster-bench/<UTC time>) holds each process's JSON
# (SCENARIO-rRATE-RUN/{pub,sub-NODE}.json, stderr beside it) and summary.md: per
# scenario and rate the medians over runs of deliveries/s (all subscriber processes),
# p50/p99 per node, messages not delivered by the end of the drain, frames per write,
# server CPU (core 0 processes) and loadgen CPU (core 1, all loadgens), over the
# window. Everything started here is stopped by PID on exit.
#
# Needs: release builds of corecast (with cluster support) and loadgen
# (CORECAST_BIN / LOADGEN_BIN, default target/release/...), redis-server
# and redis-cli (scripts/setup-test-deps.sh installs them), python3 (summary),
# curl, taskset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CORECAST_BIN="${CORECAST_BIN:-$ROOT/target/release/corecast}"
LOADGEN_BIN="${LOADGEN_BIN:-$ROOT/target/release/loadgen}"

SCENARIOS="cluster single single-redis"
RATES="10 50 200"
RUNS=3
SUBS=15000
NODES=3
DURATION=10
WARMUP=3
DRAIN=5
SIZE=64
RAMP_BUDGET=25
OUT=""
SERVER_CPU=0
LOAD_CPU=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --rates) RATES="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --subs) SUBS="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --drain) DRAIN="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --ramp-budget) RAMP_BUDGET="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "cluster.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for s in $SCENARIOS; do
  case "$s" in cluster | single | single-redis) ;; *)
    echo "cluster.sh: unknown scenario '$s' (cluster, single, single-redis)" >&2; exit 2 ;;
  esac
done
if [ "$NODES" -lt 1 ] || [ "$NODES" -gt 9 ]; then echo "cluster.sh: --nodes must be 1..9" >&2; exit 2; fi
for b in "$CORECAST_BIN" "$LOADGEN_BIN"; do
  [ -x "$b" ] || { echo "cluster.sh: $b missing (cargo build --release -p corecast --bin corecast -p corecast-bench --bin loadgen)" >&2; exit 2; }
done
command -v redis-server >/dev/null || { echo "cluster.sh: redis-server not found (bash scripts/setup-test-deps.sh installs it)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "cluster.sh: python3 not found (summary)" >&2; exit 2; }
for c in taskset curl; do
  command -v "$c" >/dev/null || { echo "cluster.sh: $c not found: sudo apt-get install -y util-linux curl (or bash scripts/setup-test-deps.sh for taskset)" >&2; exit 2; }
done

# Each process needs one descriptor per socket: lift the soft limit to the hard one
# (children inherit it). The reference machine's hard limit is 20,000.
ulimit -n "$(ulimit -Hn)"
NOFILE="$(ulimit -n)"
if [ "$NOFILE" != unlimited ] && [ "$SUBS" -gt $((NOFILE - 200)) ]; then
  echo "cluster.sh: --subs $SUBS does not fit under the open-files limit $NOFILE (per process)" >&2
  exit 2
fi

OUT="${OUT:-$ROOT/reports/cluster-bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
log() { printf '[cluster.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$OUT/run.log" >&2; }

PIDS=()        # every process started here, stopped by PID on exit
stop_pids() {
  local p
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
cleanup() { [ "${#PIDS[@]}" -eq 0 ] || stop_pids "${PIDS[@]}"; PIDS=(); }
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_http() { # wait_http PORT PATH: up to 15 s for a 200
  for _ in $(seq 150); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$1$2" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
cpu_ticks() { # utime+stime of PID in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
stat_conns() { # open connections a node reports
  curl -fsS "http://127.0.0.1:$1/stats" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("connections",0))' 2>/dev/null || echo -1
}

REDIS_PID=""
REDIS_PORT=""
start_redis() {
  REDIS_PORT="$(free_port)"
  taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --protected-mode yes --daemonize no --logfile "$OUT/redis.log" --dir "$OUT" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  log "redis-server did not answer on port $REDIS_PORT"
  return 1
}

NODE_PIDS=()
NODE_PORTS=()
NODE_IDS=()
start_nodes() { # start_nodes COUNT CLUSTER(0|1) TAG
  local count="$1" cluster="$2" tag="$3" i
  NODE_PIDS=(); NODE_PORTS=(); NODE_IDS=()
  for i in $(seq 0 $((count - 1))); do
    local id port cfg
    id="$(printf "\\x$(printf %x $((97 + i)))")"  # a, b, c, ...
    port="$(free_port)"
    cfg="$OUT/node-$tag-$id.yaml"
    # The project's config.yaml (endpoints, limits: max_connections_per_shard 100000,
    # max_connections_per_ip 0) with this node's port, one shard, no WebTransport
    # (no UDP listener or certificate), and the cluster section when asked.
    {
      awk -v port="$port" '
        /^listen:/ { print "listen: 127.0.0.1:" port; next }
        /^shards:/ { print "shards: 1"; next }
        /^[a-z_]+:/ { section = $1 }
        section == "webtransport:" && /^  enabled:/ { print "  enabled: false"; next }
        { print }' "$ROOT/config.yaml"
      if [ "$cluster" = 1 ]; then
        echo "cluster:"
        echo "  broker: redis"
        echo "  url: redis://127.0.0.1:$REDIS_PORT/0"
        echo "  node_id: $id"
        echo "  key_prefix: cbench$$"
      fi
    } >"$cfg"
    "$CORECAST_BIN" check-config "$cfg" >/dev/null
    taskset -c "$SERVER_CPU" "$CORECAST_BIN" serve --config "$cfg" >"$OUT/node-$tag-$id.out" 2>"$OUT/node-$tag-$id.err" &
    NODE_PIDS+=("$!"); PIDS+=("$!"); NODE_PORTS+=("$port"); NODE_IDS+=("$id")
  done
  for i in "${!NODE_PORTS[@]}"; do
    wait_http "${NODE_PORTS[$i]}" /stats || { log "node ${NODE_IDS[$i]} did not come up (see $OUT/node-$tag-${NODE_IDS[$i]}.err)"; return 1; }
    if [ "$cluster" = 1 ]; then
      local ok=0
      for _ in $(seq 100); do
        if curl -fsS "http://127.0.0.1:${NODE_PORTS[$i]}/stats" | python3 -c 'import json,sys; c=json.load(sys.stdin).get("cluster") or {}; sys.exit(0 if c.get("connected") in (1, True) else 1)'; then ok=1; break; fi
        sleep 0.1
      done
      [ "$ok" = 1 ] || { log "node ${NODE_IDS[$i]}: /stats shows no connected cluster (is $CORECAST_BIN cluster-capable?)"; return 1; }
    fi
  done
}

run_one() { # run_one SCENARIO RATE RUN
  local scen="$1" rate="$2" run="$3" dir i
  dir="$OUT/$scen-r$rate-$run"
  mkdir -p "$dir"
  local start_at=$(($(date +%s) + RAMP_BUDGET))
  local common=(--size "$SIZE" --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" --start-at "$start_at" --room cbench)
  local lg_pids=()
  for i in "${!NODE_PORTS[@]}"; do
    local k=$((i + 1))
    taskset -c "$LOAD_CPU" "$LOADGEN_BIN" fanout --addr "127.0.0.1:${NODE_PORTS[$i]}" --listen-only \
      --subscribers "$SUBS" --sources "127.0.$k.1,127.0.$k.2,127.0.$k.3" --per-source 5000 \
      "${common[@]}" >"$dir/sub-${NODE_IDS[$i]}.json" 2>"$dir/sub-${NODE_IDS[$i]}.err" &
    lg_pids+=("$!"); PIDS+=("$!")
  done
  taskset -c "$LOAD_CPU" "$LOADGEN_BIN" fanout --addr "127.0.0.1:${NODE_PORTS[0]}" \
    --subscribers 0 --publishers 1 --rate "$rate" --sources 127.0.99.1 "${common[@]}" \
    >"$dir/pub.json" 2>"$dir/pub.err" &
  lg_pids+=("$!"); PIDS+=("$!")

  # Server-side CPU (core 0 processes) over the measured window.
  local srv=("${NODE_PIDS[@]}")
  [ -z "$REDIS_PID" ] || srv+=("$REDIS_PID")
  local w0=$((start_at + WARMUP))
  while [ "$(date +%s)" -lt "$w0" ]; do sleep 0.2; done
  local -A t0=()
  local p
  for p in "${srv[@]}" "${lg_pids[@]}"; do t0[$p]="$(cpu_ticks "$p")"; done
  sleep "$DURATION"
  {
    for i in "${!NODE_PIDS[@]}"; do
      p="${NODE_PIDS[$i]}"
      echo "node-${NODE_IDS[$i]} $(( $(cpu_ticks "$p") - ${t0[$p]} ))"
    done
    [ -z "$REDIS_PID" ] || echo "redis $(( $(cpu_ticks "$REDIS_PID") - ${t0[$REDIS_PID]} ))"
    local lg=0
    for p in "${lg_pids[@]}"; do lg=$((lg + $(cpu_ticks "$p") - ${t0[$p]})); done
    echo "loadgens $lg"
  } >"$dir/cpu.txt"
  echo "ticks_per_s $(getconf CLK_TCK) window_s $DURATION" >>"$dir/cpu.txt"

  # The loadgens end themselves (drain bounded by --drain); bound the wait anyway.
  local deadline=$(($(date +%s) + DRAIN + 30))
  for p in "${lg_pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
  done
  stop_pids "${lg_pids[@]}"
  local keep=() q
  for q in "${PIDS[@]}"; do
    case " ${lg_pids[*]} " in *" $q "*) ;; *) keep+=("$q") ;; esac
  done
  PIDS=("${keep[@]}")
  # Let the nodes close the old connections before the next run.
  for i in "${!NODE_PORTS[@]}"; do
    for _ in $(seq 100); do
      [ "$(stat_conns "${NODE_PORTS[$i]}")" -le 1 ] && break
      sleep 0.2
    done
  done
  python3 "$ROOT/benches/cluster_summary.py" --one "$dir" | tee -a "$OUT/run.log" >&2
}

log "output: $OUT"
log "scenarios: $SCENARIOS; rates: $RATES msg/s; runs: $RUNS; subscribers per node: $SUBS; nodes: $NODES"
log "pinning: nodes + redis-server on core $SERVER_CPU, loadgens on core $LOAD_CPU; open files: $NOFILE"
for scen in $SCENARIOS; do
  REDIS_PID=""
  case "$scen" in
    cluster) start_redis; start_nodes "$NODES" 1 "$scen" ;;
    single) start_nodes 1 0 "$scen" ;;
    single-redis) start_redis; start_nodes 1 1 "$scen" ;;
  esac
  log "$scen: ${#NODE_PORTS[@]} node(s) on ports ${NODE_PORTS[*]}${REDIS_PID:+, redis on $REDIS_PORT}"
  for rate in $RATES; do
    for run in $(seq "$RUNS"); do
      log "$scen: rate $rate msg/s, run $run/$RUNS"
      run_one "$scen" "$rate" "$run"
    done
  done
  cleanup
done
python3 "$ROOT/benches/cluster_summary.py" "$OUT" | tee "$OUT/summary.md"
