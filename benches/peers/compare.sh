#!/usr/bin/env bash
# Side-by-side benchmark: corecast vs Bun's WebSocket server (uWebSockets fork,
# native topic pub/sub), both driven by OUR load generator (target/release/loadgen).
#
#   bash benches/peers/compare.sh
#
# Each server runs alone, pinned to core $SERVER_CPU (default 0); loadgen is pinned
# to core $LOADGEN_CPU (default 1). Every measurement starts a fresh server on a
# fresh port. Scenarios:
#   (a) max throughput: loadgen fanout --rate 0, $SUBS subscribers + 1 publisher, $SIZE B
#   (b) fixed rate: $RATE_B msg/s x ($SUBS + 1) receivers (~2M deliveries/s), $SIZE B;
#       p50/p99 latency and the server's CPU% over the measured window
#       (utime+stime of the whole process from /proc/PID/stat / elapsed / CLK_TCK)
#   (c) idle memory: VmRSS of a fresh server before and ~$IDLE_SAMPLE s after
#       `loadgen idle --connections $IDLE_CONNS` finished its ramp -> bytes/connection
# (a) and (b) are repeated $REPS times with the server order alternating per rep;
# the summary shows medians and the median of the per-rep corecast/bun ratios.
#
# Raw JSON lines (loadgen's line plus peer, scenario, rep, cpu fields) go to
# reports/peers/compare-STAMP.jsonl, server logs and loadgen stderr to
# reports/peers/compare-STAMP/. The summary goes to stdout, progress to stderr.
#
# Knobs (environment): REPS SUBS SIZE RATE_B DURATION WARMUP IDLE_CONNS IDLE_HOLD
# IDLE_SAMPLE SERVER_CPU LOADGEN_CPU PORT_BASE SERVERS ("corecast bun") SKIP_BUILD=1
# BUN=/path/to/bun (skip the npm install) CORECAST=/path LOADGEN=/path (prebuilt
# binaries, e.g. copies taken while others rebuild target/; implies SKIP_BUILD=1) OUT_DIR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

REPS=${REPS:-3}
SUBS=${SUBS:-10000}
SIZE=${SIZE:-64}
RATE_B=${RATE_B:-200}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_HOLD=${IDLE_HOLD:-8}
IDLE_SAMPLE=${IDLE_SAMPLE:-5}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT_BASE=${PORT_BASE:-18400}
SERVERS=${SERVERS:-"corecast bun"}
OUT_DIR=${OUT_DIR:-$ROOT/reports/peers}

CORECAST=${CORECAST:-$ROOT/target/release/corecast}
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
BUN=${BUN:-}

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'compare.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup
SRV_PID=""
LG_PID=""

stop_pid() { # PID: TERM, up to 5 s grace, then KILL; only ever a PID this script started
    local pid=$1 i
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$LG_PID"
    LG_PID=""
    stop_pid "$SRV_PID"
    SRV_PID=""
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- summary
summarize() { # RESULTS.jsonl -> table on stdout
    # shellcheck disable=SC2016
jq -rs --arg file "$1" '
def median: map(select(. != null)) | sort
    | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def r0: if . == null then "-" else (. | round | tostring) end;
def r1: if . == null then "-" else ((. * 10 | round) / 10 | tostring) end;
def r2: if . == null then "-" else ((. * 100 | round) / 100 | tostring) end;
def nsdeliv: if .server_cpu_pct == null or (.deliveries_per_sec // 0) == 0 then null
    else .server_cpu_pct / 100 * 1e9 / .deliveries_per_sec end;
def mfmt: if . == null then "-" else ((. / 1e6 * 100 | round) / 100 | tostring) + "M" end;
(map(select(.kind == "meta")) | first) as $meta
| map(select(.kind == "result")) as $res
| ($res | map(select(.error == null))) as $ok
| ($ok | map(.peer) | unique) as $servers
| def sel($srvname; $scen): $ok | map(select(.peer == $srvname and .scenario == $scen));
  def ratio($scen2; f): [ $ok | map(select(.scenario == $scen2)) | group_by(.rep)[]
      | (map(select(.peer == "corecast")) | first) as $c | (map(select(.peer == "bun")) | first) as $b
      | select($c != null and $b != null) | ($c | f) as $x | ($b | f) as $y
      | select($x != null and $y != null and $y != 0) | $x / $y ];
"corecast vs Bun \($meta.bun) | git \($meta.git) (corecast binary \($meta.corecast_bin // "-") built \($meta.corecast_mtime // "-")) | \($meta.subscribers) subscribers + 1 publisher, \($meta.size) B, warmup \($meta.warmup_s) s + window \($meta.duration_s) s | server on core \($meta.server_cpu), loadgen on core \($meta.loadgen_cpu) | load at start \($meta.loadavg_start)",
"",
"(a) max throughput (--rate 0), median of \($meta.reps)",
(["server", "deliv/s", "pub/s", "p50_us", "p99_us", "srv_cpu%", "srv_ns/deliv", "srv_core%", "lg_core%", "lost(max)", "closed", "failed", "deliv/s per run"] | @tsv),
($servers[] as $s | sel($s; "a") as $r | select($r | length > 0) |
  [$s, ($r | map(.deliveries_per_sec) | median | mfmt), ($r | map(.published_per_sec) | median | r0),
   ($r | map(.latency_us.p50) | median | r0), ($r | map(.latency_us.p99) | median | r0),
   ($r | map(.server_cpu_pct) | median | r1), ($r | map(nsdeliv) | median | r0),
   ($r | map(.server_core_busy_pct) | median | r1), ($r | map(.loadgen_core_busy_pct) | median | r1),
   ($r | map(.lost) | max | r0), ($r | map(.server_closed.total) | add | r0), ($r | map(.connected.failed) | add | r0),
   ($r | sort_by(.rep) | map(.deliveries_per_sec | mfmt) | join(" "))] | @tsv),
"",
"(b) fixed rate \($meta.rate_b) msg/s x \($meta.subscribers + 1) receivers, median of \($meta.reps)",
(["server", "deliv/s", "pub/s", "p50_us", "p99_us", "srv_cpu%", "srv_ns/deliv", "srv_core%", "lg_core%", "lost(max)", "closed", "failed", "p99 per run"] | @tsv),
($servers[] as $s | sel($s; "b") as $r | select($r | length > 0) |
  [$s, ($r | map(.deliveries_per_sec) | median | mfmt), ($r | map(.published_per_sec) | median | r0),
   ($r | map(.latency_us.p50) | median | r0), ($r | map(.latency_us.p99) | median | r0),
   ($r | map(.server_cpu_pct) | median | r1), ($r | map(nsdeliv) | median | r0),
   ($r | map(.server_core_busy_pct) | median | r1), ($r | map(.loadgen_core_busy_pct) | median | r1),
   ($r | map(.lost) | max | r0), ($r | map(.server_closed.total) | add | r0), ($r | map(.connected.failed) | add | r0),
   ($r | sort_by(.rep) | map(.latency_us.p99 | r0) | join(" "))] | @tsv),
"",
"(c) idle memory: \($meta.idle_connections) idle connections; VmRSS of a fresh server before, and \($meta.idle_sample_s) s after the ramp",
(["server", "rss_before_kB", "rss_after_kB", "connected", "bytes/conn", "closed"] | @tsv),
($servers[] as $s | sel($s; "c")[] |
  [$s, (.rss_before_kb | r0), (.rss_after_kb | r0), "\(.connected)/\(.connections)", (.bytes_per_conn | r0), (.server_closed.total | r0)] | @tsv),
"",
"corecast / bun (median of per-rep ratios; >1 = corecast higher)",
(["metric", "ratio", "per rep"] | @tsv),
( [["(a) deliveries/s", ratio("a"; .deliveries_per_sec)],
   ["(a) p99 latency", ratio("a"; .latency_us.p99)],
   ["(a) server CPU ns/delivery", ratio("a"; nsdeliv)],
   ["(b) p50 latency", ratio("b"; .latency_us.p50)],
   ["(b) p99 latency", ratio("b"; .latency_us.p99)],
   ["(b) server CPU%", ratio("b"; .server_cpu_pct)],
   ["(b) server CPU ns/delivery", ratio("b"; nsdeliv)],
   ["(c) bytes/conn", ([sel("corecast"; "c")[0].bytes_per_conn, sel("bun"; "c")[0].bytes_per_conn]
        | if .[0] != null and .[1] != null and .[1] != 0 then [.[0] / .[1]] else [] end)]][]
  | [.[0], (.[1] | median | r2), (.[1] | map(r2) | join(" "))] | @tsv ),
"",
"anomalies:",
( [ $res[] | select(.error != null or (.lost // 0) > 0 or (.gaps // 0) > 0 or (.reordered // 0) > 0
      or (.foreign // 0) > 0 or (.server_closed.total // 0) > 0 or ((.connected | objects | .failed) // 0) > 0
      or ((.failed // 0) | numbers) > 0 or .server_alive_at_end == false or (.loadgen_exit // 0) != 0
      or ((.server_stats_end.slow_consumers // 0) > 0) or ((.server_stats_end.mesh_overflows // 0) > 0))
    | "  \(.peer) (\(.scenario)) rep \(.rep): " + (if .error then .error else
      "lost \(.lost // 0), gaps \(.gaps // 0), reordered \(.reordered // 0), foreign \(.foreign // 0), closed \(.server_closed | tostring), failed \((.connected | objects | .failed) // .failed // 0), server_alive \(.server_alive_at_end // true), slow_consumers \(.server_stats_end.slow_consumers // "-")" end) ]
  | if length == 0 then "  none (no loss, closes, connect failures or errors)" else .[] end ),
"",
"raw: \($file)"
' "$1" | awk -F'\t' '
    NF <= 1 { if (n) { flush() } print; next }
    { rows[++n] = $0 }
    function flush(   i, j, c, w, f) {
        for (i = 1; i <= n; i++) { c = split(rows[i], f, "\t"); for (j = 1; j <= c; j++) if (length(f[j]) > w[j]) w[j] = length(f[j]) }
        for (i = 1; i <= n; i++) { c = split(rows[i], f, "\t"); line = ""
            for (j = 1; j <= c; j++) line = line sprintf(j < c ? ("%-" (w[j] + 2) "s") : "%s", f[j]); print "  " line }
        n = 0; delete w }
    END { if (n) flush() }'
}

if [[ ${1:-} == --summarize ]]; then # re-print the summary of an earlier run
    [[ -r ${2:-} ]] || die "usage: compare.sh --summarize reports/peers/compare-STAMP.jsonl"
    command -v jq >/dev/null || die "'jq' is required but not installed"
    summarize "$2"
    exit 0
fi

# ---------------------------------------------------------------- prerequisites
for cmd in taskset jq awk; do
    command -v "$cmd" >/dev/null || die "'$cmd' is required but not installed"
done
[[ -r /proc/self/stat ]] || die "/proc is required (Linux)"
NCPU=$(getconf _NPROCESSORS_ONLN)
((SERVER_CPU < NCPU && LOADGEN_CPU < NCPU)) || die "need cores $SERVER_CPU and $LOADGEN_CPU; this machine has $NCPU"
CLK_TCK=$(getconf CLK_TCK)
[[ $(ulimit -n) == unlimited || $(ulimit -n) -gt $((SUBS + 64)) ]] ||
    ulimit -n $((SUBS + 1024)) 2>/dev/null ||
    die "RLIMIT_NOFILE $(ulimit -n) is too low for $SUBS connections (raise it: ulimit -n $((SUBS + 1024)))"

[[ $CORECAST == "$ROOT/target/release/corecast" && $LOADGEN == "$ROOT/target/release/loadgen" ]] || SKIP_BUILD=1
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found (or set SKIP_BUILD=1 with prebuilt binaries)"
    log "building corecast + loadgen (release; a no-op when up to date)"
    (cd "$ROOT" && cargo build --release -p corecast --bin corecast -p corecast-bench --bin loadgen) >&2 ||
        die "cargo build failed (SKIP_BUILD=1 runs the binaries already in target/release, if any)"
fi
[[ -x $CORECAST ]] || die "$CORECAST missing (build it: cargo build --release -p corecast --bin corecast)"
[[ -x $LOADGEN ]] || die "$LOADGEN missing (build it: cargo build --release -p corecast-bench --bin loadgen)"

BUN_WANT=$(jq -r '.dependencies.bun' "$HERE/package.json")
bun_ok() { [[ -n $1 && -x $1 ]] && "$1" --version >/dev/null 2>&1; }
find_bun() { # the npm wrapper's binary, or the platform package's binary
    local c
    for c in "$HERE/node_modules/.bin/bun" "$HERE"/node_modules/@oven/bun-linux-*/bin/bun; do
        if bun_ok "$c"; then
            printf '%s\n' "$c"
            return 0
        fi
    done
    return 1
}
if [[ " $SERVERS " == *" bun "* ]]; then
    if [[ -n $BUN ]]; then
        bun_ok "$BUN" || die "BUN=$BUN does not run"
    elif ! BUN=$(find_bun); then
        command -v npm >/dev/null ||
            die "Bun is not installed in $HERE/node_modules and npm is missing; install Node.js/npm, or set BUN=/path/to/bun"
        log "installing bun@$BUN_WANT with npm into $HERE/node_modules"
        if ! (cd "$HERE" && npm install --no-package-lock --no-audit --no-fund) >&2; then
            die "npm could not install bun@$BUN_WANT (output above). Try by hand: (cd benches/peers && npm install), or set BUN=/path/to/bun"
        fi
        BUN=$(find_bun) ||
            die "npm installed bun@$BUN_WANT but no runnable binary was found under $HERE/node_modules (the @oven/bun-linux-* optional package may be missing for this platform/CPU); set BUN=/path/to/bun"
    fi
    BUN_VERSION=$("$BUN" --revision 2>/dev/null || "$BUN" --version)
    [[ $BUN_VERSION == "$BUN_WANT"* ]] || log "warning: running bun $BUN_VERSION, package.json pins $BUN_WANT"
else
    BUN_VERSION=""
fi

# ---------------------------------------------------------------- output files
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR/compare-$STAMP"
RESULTS=$OUT_DIR/compare-$STAMP.jsonl
LOGS=$OUT_DIR/compare-$STAMP
: >"$RESULTS"

GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || GIT_REV="$GIT_REV+dirty"
jq -nc --arg stamp "$STAMP" --arg git "$GIT_REV" --arg bun "$BUN_VERSION" \
    --arg corecast "$("$CORECAST" --version 2>&1 | head -n1)" --arg kernel "$(uname -r)" \
    --arg corecast_bin "$CORECAST" --arg corecast_mtime "$(date -r "$CORECAST" -u +%FT%TZ)" \
    --arg loadgen_bin "$LOADGEN" --arg loadgen_mtime "$(date -r "$LOADGEN" -u +%FT%TZ)" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --argjson ncpu "$NCPU" --argjson reps "$REPS" --argjson subs "$SUBS" --argjson size "$SIZE" \
    --argjson rate_b "$RATE_B" --argjson duration "$DURATION" --argjson warmup "$WARMUP" \
    --argjson server_cpu "$SERVER_CPU" --argjson loadgen_cpu "$LOADGEN_CPU" \
    --argjson idle_conns "$IDLE_CONNS" --argjson idle_hold "$IDLE_HOLD" --argjson idle_sample "$IDLE_SAMPLE" \
    '{kind: "meta", stamp: $stamp, git: $git, corecast: $corecast, bun: $bun, kernel: $kernel,
      corecast_bin: $corecast_bin, corecast_mtime: $corecast_mtime, loadgen_bin: $loadgen_bin, loadgen_mtime: $loadgen_mtime,
      ncpu: $ncpu, loadavg_start: $loadavg, reps: $reps, subscribers: $subs, size: $size,
      rate_b: $rate_b, duration_s: $duration, warmup_s: $warmup,
      server_cpu: $server_cpu, loadgen_cpu: $loadgen_cpu,
      idle_connections: $idle_conns, idle_hold_s: $idle_hold, idle_sample_s: $idle_sample}' >>"$RESULTS"
log "raw results -> $RESULTS"

# ---------------------------------------------------------------- helpers
now() { printf '%s\n' "${EPOCHREALTIME:-$(date +%s.%N)}"; }

proc_ticks() { # utime+stime of the whole process (all threads), in clock ticks ("" if gone)
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s=${s##*) } # drop "pid (comm) ": field 3 (state) becomes $1
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}

cpu_busy_total() { # "busy total" jiffies of one core from /proc/stat
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

vmrss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }

PORT=$PORT_BASE
next_port() { # a port nothing listens on (fresh per server start: no TIME_WAIT reuse across runs)
    local tries
    for ((tries = 0; tries < 200; tries++)); do
        PORT=$((PORT + 1))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
    done
    die "no free port above $PORT_BASE"
}

start_server() { # NAME TAG -> SRV_PID, PORT
    local name=$1 tag=$2 i
    next_port
    local slog=$LOGS/$tag.server.log
    case $name in
    corecast) taskset -c "$SERVER_CPU" "$CORECAST" serve --listen "127.0.0.1:$PORT" --shards 1 >"$slog" 2>&1 & ;;
    bun) taskset -c "$SERVER_CPU" "$BUN" "$HERE/bun-pubsub.js" "$PORT" >"$slog" 2>&1 & ;;
    *) die "unknown server '$name'" ;;
    esac
    SRV_PID=$! # taskset execs the server: this is the server's PID
    for ((i = 0; i < 300; i++)); do
        grep -q "listening on" "$slog" 2>/dev/null && return 0
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$slog" >&2 || true
    die "$name did not start (log: $slog)"
}

stop_server() {
    stop_pid "$SRV_PID"
    SRV_PID=""
}

server_stats_json() { # corecast's /stats (null if unavailable)
    local body=""
    if command -v curl >/dev/null; then
        body=$(curl -sf --max-time 2 "http://127.0.0.1:$PORT/stats" 2>/dev/null) || body=""
    fi
    if [[ -n $body ]] && jq -e . >/dev/null 2>&1 <<<"$body"; then
        jq -c . <<<"$body"
    else
        echo null
    fi
}

wait_ramp() { # ERRFILE: until loadgen reports its ramp done (or exits); 1 if it never did
    local f=$1 i
    for ((i = 0; i < 1200; i++)); do
        grep -q "ramp done" "$f" 2>/dev/null && return 0
        kill -0 "$LG_PID" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

record_error() { # SERVER SCENARIO REP MESSAGE
    jq -nc --arg server "$1" --arg scenario "$2" --argjson rep "$3" --arg error "$4" \
        '{kind: "result", peer: $server, scenario: $scenario, rep: $rep, error: $error}' >>"$RESULTS"
    log "ERROR $1 $2 rep $3: $4"
}

run_fanout() { # SERVER SCENARIO(a|b) REP
    local server=$1 scenario=$2 rep=$3 rate
    case $scenario in
    a) rate=0 ;;
    b) rate=$RATE_B ;;
    esac
    local tag="$scenario-$server-r$rep"
    local out=$LOGS/$tag.loadgen.json err=$LOGS/$tag.loadgen.err
    start_server "$server" "$tag"
    log "($scenario) $server rep $rep: port $PORT, pid $SRV_PID, rate $rate"
    taskset -c "$LOADGEN_CPU" "$LOADGEN" fanout --addr "127.0.0.1:$PORT" --path /ws/chat \
        --subscribers "$SUBS" --publishers 1 --size "$SIZE" --rate "$rate" \
        --duration "$DURATION" --warmup "$WARMUP" >"$out" 2>"$err" &
    LG_PID=$!
    local ok=1 c0="" c1="" t0="" t1="" k0="" k1="" l0="" l1=""
    if wait_ramp "$err"; then
        sleep "$WARMUP"
        c0=$(proc_ticks "$SRV_PID") t0=$(now) k0=$(cpu_busy_total "$SERVER_CPU") l0=$(cpu_busy_total "$LOADGEN_CPU")
        sleep "$DURATION"
        c1=$(proc_ticks "$SRV_PID") t1=$(now) k1=$(cpu_busy_total "$SERVER_CPU") l1=$(cpu_busy_total "$LOADGEN_CPU")
    else
        ok=0
    fi
    local rc=0
    wait "$LG_PID" || rc=$?
    LG_PID=""
    local sstats=null
    [[ $server == corecast ]] && sstats=$(server_stats_json)
    local alive=1
    kill -0 "$SRV_PID" 2>/dev/null || alive=0
    stop_server
    if ((ok == 0)) || ! jq -e . "$out" >/dev/null 2>&1; then
        record_error "$server" "$scenario" "$rep" "loadgen exit $rc, no usable result (see $err)"
        return 0
    fi
    local cpu core0 core1 win
    read -r cpu core0 core1 win < <(awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
        -v k0="$k0" -v k1="$k1" -v l0="$l0" -v l1="$l1" 'BEGIN {
            split(k0, a, " "); split(k1, b, " "); split(l0, p, " "); split(l1, q, " ");
            el = t1 - t0;
            printf "%s %.1f %.1f %.2f\n", (c0 == "" || c1 == "") ? "null" : sprintf("%.1f", 100 * (c1 - c0) / hz / el),
                100 * (b[1] - a[1]) / (b[2] - a[2]), 100 * (q[1] - p[1]) / (q[2] - p[2]), el }')
    jq -c --arg server "$server" --arg scenario "$scenario" --argjson rep "$rep" \
        --argjson cpu "$cpu" --argjson core0 "$core0" --argjson core1 "$core1" --argjson win "$win" \
        --argjson rc "$rc" --argjson alive "$alive" --argjson sstats "$sstats" --argjson port "$PORT" \
        '{kind: "result", peer: $server, scenario: $scenario, rep: $rep, port: $port,
          server_cpu_pct: $cpu, server_core_busy_pct: $core0, loadgen_core_busy_pct: $core1,
          cpu_window_s: $win, loadgen_exit: $rc, server_alive_at_end: ($alive == 1),
          server_stats_end: $sstats} + .' "$out" >>"$RESULTS"
    tail -n1 "$RESULTS" | jq -r '"  -> \(.deliveries_per_sec) deliv/s, p50 \(.latency_us.p50) us, p99 \(.latency_us.p99) us, lost \(.lost), closed \(.server_closed.total), failed \(.connected.failed), server cpu \(.server_cpu_pct)% (core busy \(.server_core_busy_pct)%)"' >&2
}

run_idle() { # SERVER
    local server=$1
    local tag="c-$server"
    local out=$LOGS/$tag.loadgen.json err=$LOGS/$tag.loadgen.err
    start_server "$server" "$tag"
    sleep 1
    local rss0 rss1=""
    rss0=$(vmrss_kb "$SRV_PID")
    log "(c) $server: port $PORT, pid $SRV_PID, idle RSS ${rss0} kB; opening $IDLE_CONNS idle connections"
    taskset -c "$LOADGEN_CPU" "$LOADGEN" idle --addr "127.0.0.1:$PORT" --path /ws/chat \
        --connections "$IDLE_CONNS" --hold "$IDLE_HOLD" >"$out" 2>"$err" &
    LG_PID=$!
    local ok=1
    if wait_ramp "$err"; then
        sleep "$IDLE_SAMPLE"
        rss1=$(vmrss_kb "$SRV_PID")
    else
        ok=0
    fi
    local rc=0
    wait "$LG_PID" || rc=$?
    LG_PID=""
    stop_server
    if ((ok == 0)) || [[ -z $rss1 ]] || ! jq -e . "$out" >/dev/null 2>&1; then
        record_error "$server" c 1 "loadgen idle exit $rc, no usable result (see $err)"
        return 0
    fi
    jq -c --arg server "$server" --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson rc "$rc" \
        '{kind: "result", peer: $server, scenario: "c", rep: 1, rss_before_kb: $rss0, rss_after_kb: $rss1,
          bytes_per_conn: (if .connected > 0 then (($rss1 - $rss0) * 1024 / .connected | round) else null end),
          bytes_per_conn_nominal: (($rss1 - $rss0) * 1024 / .connections | round),
          loadgen_exit: $rc} + .' "$out" >>"$RESULTS"
    tail -n1 "$RESULTS" | jq -r '"  -> RSS \(.rss_before_kb) -> \(.rss_after_kb) kB, \(.connected)/\(.connections) connected, \(.bytes_per_conn) B/conn, closed \(.server_closed.total)"' >&2
}

# ---------------------------------------------------------------- run
read -r -a SRV_LIST <<<"$SERVERS"
log "servers: ${SRV_LIST[*]}; bun: ${BUN_VERSION:-n/a}; reps $REPS; $SUBS subscribers, $SIZE B; load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((rep = 1; rep <= REPS; rep++)); do
    order=("${SRV_LIST[@]}")
    if ((rep % 2 == 0)); then # alternate which server goes first
        order=()
        for ((i = ${#SRV_LIST[@]} - 1; i >= 0; i--)); do order+=("${SRV_LIST[i]}"); done
    fi
    for s in "${order[@]}"; do
        run_fanout "$s" a "$rep"
        run_fanout "$s" b "$rep"
    done
done
for s in "${SRV_LIST[@]}"; do
    run_idle "$s"
done

summarize "$RESULTS"
