#!/usr/bin/env bash
# Two corecast binaries side by side on the same machine, in one session: the
# regression check for a change that should not move the numbers.
#
#   bash benches/regression.sh OLD_BINARY NEW_BINARY
#
# Scenarios (WebSocket, 64 B, default config, `--shards 1`; server pinned to core
# $SERVER_CPU, loadgen to core $LOADGEN_CPU, a fresh server per measurement):
#   echo      loadgen echo, 100 connections, one message in flight each
#   fanout1k  loadgen fanout, 1 publisher -> 1,000 subscribers, max rate
#   fanout10k loadgen fanout, 1 publisher -> 10,000 subscribers, max rate
#   sse1k     loadgen sse, 1,000 SSE subscribers (WebSocket publisher), max rate
#   wt100     loadgen wt, 100 WebTransport sessions (reliable streams), max rate
#   tls1k     tls_fanout over the tls listener (wss), 1,000 subscribers, max rate
#             (certificate from `NEW cert`, same config for both binaries)
# Each scenario runs $REPS times, alternating old/new. Server CPU is utime+stime
# from /proc/PID/stat over loadgen's run (warmup included, so compare ratios). The
# summary gives per binary the median rate, the median server CPU per message
# (ns), and the new/old ratios of the medians. Raw lines: $OUT (JSON per run).
# Knobs: REPS (3) SCENARIOS ("echo fanout1k fanout10k") SERVER_CPU (0)
# LOADGEN_CPU (1) LOADGEN (target/release/loadgen) TLS_FANOUT
# (target/release/tls_fanout) OUT. Only the default scenarios run unless named.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -eq 2 ]] || { sed -n '2,18p' "$0"; exit 2; }
OLD=$(realpath "$1")
NEW=$(realpath "$2")
REPS=${REPS:-3}
SCENARIOS=${SCENARIOS:-"echo fanout1k fanout10k"}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
TLS_FANOUT=${TLS_FANOUT:-$ROOT/target/release/tls_fanout}
OUT=${OUT:-$ROOT/reports/regression-$(date +%Y%m%d-%H%M%S).jsonl}
mkdir -p "$(dirname "$OUT")"
for b in "$OLD" "$NEW" "$LOADGEN"; do [[ -x $b ]] || { echo "not executable: $b" >&2; exit 2; }; done
command -v taskset >/dev/null || { echo "taskset (util-linux) is required: sudo apt-get install -y util-linux (or bash scripts/setup-test-deps.sh)" >&2; exit 2; }

TMP=$(mktemp -d)
if [[ " $SCENARIOS " == *" tls1k "* ]]; then
  [[ -x $TLS_FANOUT ]] || { echo "not executable: $TLS_FANOUT (cargo build --release -p corecast-bench --bin tls_fanout)" >&2; exit 2; }
  "$NEW" cert --out "$TMP" >/dev/null
fi

SRV=""
cleanup() { [[ -n $SRV ]] && kill "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null; SRV=""; }
trap 'cleanup; rm -rf "$TMP"' EXIT

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_one() { # BINARY LABEL SCENARIO REP
  local bin=$1 label=$2 sc=$3 rep=$4 port tport t0 t1 start end line
  port=$(free_port)
  local -a cfg=()
  if [[ $sc == tls1k ]]; then
    tport=$(free_port)
    printf 'tls:\n  listen: 127.0.0.1:%s\n  cert: %s/cert.pem\n  key: %s/key.pem\n' \
      "$tport" "$TMP" "$TMP" >"$TMP/tls.yaml"
    cfg=(-c "$TMP/tls.yaml")
  fi
  taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$port" --shards 1 "${cfg[@]}" >/dev/null 2>&1 &
  SRV=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  t0=$(ticks "$SRV"); start=$(date +%s.%N)
  case $sc in
    echo) line=$(taskset -c "$LOADGEN_CPU" "$LOADGEN" echo --addr "127.0.0.1:$port" \
            --connections 100 --size 64 --pipeline 1 --duration 5 --warmup 1 2>/dev/null | tail -1) ;;
    fanout1k) line=$(taskset -c "$LOADGEN_CPU" "$LOADGEN" fanout --addr "127.0.0.1:$port" \
            --subscribers 1000 --publishers 1 --size 64 --rate 0 --warmup 3 --duration 10 2>/dev/null | tail -1) ;;
    fanout10k) line=$(taskset -c "$LOADGEN_CPU" "$LOADGEN" fanout --addr "127.0.0.1:$port" \
            --subscribers 10000 --publishers 1 --size 64 --rate 0 --warmup 3 --duration 10 2>/dev/null | tail -1) ;;
    sse1k) line=$(taskset -c "$LOADGEN_CPU" "$LOADGEN" sse --addr "127.0.0.1:$port" \
            --subscribers 1000 --publishers 1 --size 64 --rate 0 --warmup 3 --duration 10 2>/dev/null | tail -1) ;;
    wt100) line=$(taskset -c "$LOADGEN_CPU" "$LOADGEN" wt --addr "127.0.0.1:$port" \
            --subscribers 100 --publishers 1 --size 64 --rate 0 --warmup 3 --duration 10 2>/dev/null | tail -1) ;;
    tls1k)
      for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$tport") 2>/dev/null && break; sleep 0.1; done
      line=$(taskset -c "$LOADGEN_CPU" "$TLS_FANOUT" --addr "127.0.0.1:$tport" --ca "$TMP/cert.pem" \
            --stats "127.0.0.1:$port" --pid "$SRV" --subscribers 1000 --size 64 --warmup 3 --duration 10 2>/dev/null | tail -1) ;;
  esac
  t1=$(ticks "$SRV"); end=$(date +%s.%N)
  cleanup
  python3 - "$line" "$label" "$sc" "$rep" "$t0" "$t1" "$start" "$end" "$(getconf CLK_TCK)" >>"$OUT" <<'PY'
import json, sys
line, label, sc, rep, t0, t1, start, end, hz = sys.argv[1:]
r = json.loads(line)
r.update(binary=label, scenario=sc, rep=int(rep),
         server_cpu_pct=100.0 * (int(t1) - int(t0)) / int(hz) / (float(end) - float(start)))
print(json.dumps(r))
PY
  echo "  $sc $label rep $rep done" >&2
}

for sc in $SCENARIOS; do
  for rep in $(seq "$REPS"); do
    if (( rep % 2 )); then run_one "$OLD" old "$sc" "$rep"; run_one "$NEW" new "$sc" "$rep"
    else run_one "$NEW" new "$sc" "$rep"; run_one "$OLD" old "$sc" "$rep"; fi
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| scenario | binary | rate (median) | server CPU % | server CPU ns per message | p99 us | runs |")
print("|---|---|---|---|---|---|---|")
ratios = {}
for sc in dict.fromkeys(r["scenario"] for r in rows):
    med = {}
    for b in ("old", "new"):
        rs = [r for r in rows if r["scenario"] == sc and r["binary"] == b]
        rate = lambda r: (r.get("msgs_per_sec") or r.get("deliveries_per_sec")
                          or r.get("deliveries_per_s") or 0)
        rates = [rate(r) for r in rs]
        cpu = [r["server_cpu_pct"] for r in rs]
        ns = [r["server_cpu_pct"] / 100 * 1e9 / rate(r) for r in rs if rate(r)]
        lat = [((r.get("latency_us") or r.get("latency") or {}).get("p99")) for r in rs]
        lat = [x for x in lat if x is not None]
        med[b] = (statistics.median(rates), statistics.median(ns) if ns else float("nan"))
        print(f"| {sc} | {b} | {statistics.median(rates):,.0f} | {statistics.median(cpu):.0f} | "
              f"{med[b][1]:.0f} | {statistics.median(lat) if lat else '-'} | "
              f"{', '.join(f'{x:,.0f}' for x in rates)} |")
    ratios[sc] = (med["new"][0] / med["old"][0], med["new"][1] / med["old"][1])
print()
for sc, (r, c) in ratios.items():
    print(f"{sc}: new/old rate {r:.3f}, new/old server CPU per message {c:.3f}")
PY
echo "raw: $OUT" >&2
