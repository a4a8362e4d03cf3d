#!/usr/bin/env bash
# Side-by-side benchmark: corecast vs Bun's WebSocket server (uWebSockets fork,
# native topic pub/sub), both driven by OUR load generator (target/release/loadgen).
#
#   bash benches/peers/compare.sh [--publish]
#   bash benches/peers/compare.sh --summarize reports/peers/compare-STAMP.jsonl [--publish]
#
# Each server runs alone, pinned to core $SERVER_CPU (default 0); loadgen is pinned
# to core $LOADGEN_CPU (default 1). Every measurement starts a fresh server on a
# fresh port. Scenarios ($SCENARIOS, default: all, in this order):
#   echo       loadgen echo --path /ws/echo, $ECHO_CONNS connections, $SIZE B,
#              pipeline $ECHO_PIPELINE: msgs/s, p50/p99, server CPU% and messages
#              per server CPU-second (msgs/s / (cpu% / 100))
#   fan15k     loadgen fanout --rate 0 to $SUBS_MAX subscribers + 1 publisher
#   fan1k      loadgen fanout --rate 0 to $SUBS_SMALL subscribers + 1 publisher
#              (both: deliveries/s, p99, server CPU ns per delivery)
#   fixed1000  loadgen fanout --rate $RATE_HI to $SUBS_SMALL subscribers
#   fixed200   loadgen fanout --rate $RATE_LO to $SUBS_SMALL subscribers
#              (both: server CPU%, p50/p99)
#   idle_ws    VmRSS of a fresh server before and ~$IDLE_SAMPLE s after
#              `loadgen idle --connections $IDLE_CONNS` finished its ramp -> bytes/connection
#   idle_sse   the same with `loadgen idle --sse` (GET /sse, held open)
# Server CPU% = utime+stime of the whole server process (/proc/PID/stat) over the
# measured window / elapsed / CLK_TCK. The load scenarios run $REPS times with the
# server order alternating per rep; the idle ones run $IDLE_REPS times.
#
# Output (OUT_DIR, default reports/peers):
#   compare-STAMP.jsonl  raw JSON lines (loadgen's line plus peer, scenario, rep, cpu fields)
#   compare-STAMP/       server logs and loadgen stderr
#   compare-STAMP.md     the Markdown table (also printed to stdout after the detailed summary)
#   compare-STAMP.svg    gnuplot chart: throughput normalised to Bun, p99 latency
# --publish (or PUBLISH=1): copy the SVG to docs/img/peer-comparison.svg and put the
# table between the lines <!-- peer-comparison:begin --> and <!-- peer-comparison:end -->
# in README.md and docs/BENCHMARKS.md (files without both markers are left alone).
#
# Knobs (environment): REPS SCENARIOS SIZE DURATION WARMUP ECHO_CONNS ECHO_PIPELINE
# SUBS_MAX (old name SUBS) SUBS_SMALL RATE_HI RATE_LO (old name RATE_B) WINDOW
# IDLE_CONNS IDLE_HOLD IDLE_SAMPLE IDLE_REPS SERVER_CPU LOADGEN_CPU PORT_BASE
# SERVERS ("corecast bun") SKIP_BUILD=1 BUN=/path/to/bun (skip the npm install)
# CORECAST=/path LOADGEN=/path (prebuilt binaries; imply SKIP_BUILD=1)
# CORECAST_CONFIG=file (default: a generated one with WebTransport off) OUT_DIR
# PUBLISH=1 PUBLISH_ROOT (where --publish writes; default the repository root).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

REPS=${REPS:-3}
SCENARIOS=${SCENARIOS:-"echo fan15k fan1k fixed1000 fixed200 idle_ws idle_sse"}
SIZE=${SIZE:-64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
ECHO_CONNS=${ECHO_CONNS:-100}
ECHO_PIPELINE=${ECHO_PIPELINE:-1}
SUBS_MAX=${SUBS_MAX:-${SUBS:-15000}}
SUBS_SMALL=${SUBS_SMALL:-1000}
RATE_HI=${RATE_HI:-1000}
RATE_LO=${RATE_LO:-${RATE_B:-200}}
WINDOW=${WINDOW:-64}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_HOLD=${IDLE_HOLD:-8}
IDLE_SAMPLE=${IDLE_SAMPLE:-5}
IDLE_REPS=${IDLE_REPS:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
PORT_BASE=${PORT_BASE:-18400}
SERVERS=${SERVERS:-"corecast bun"}
OUT_DIR=${OUT_DIR:-$ROOT/reports/peers}
PUBLISH=${PUBLISH:-0}
PUBLISH_ROOT=${PUBLISH_ROOT:-$ROOT}

CORECAST=${CORECAST:-$ROOT/target/release/corecast}
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
CORECAST_CONFIG=${CORECAST_CONFIG:-}
BUN=${BUN:-}

ALL_SCENARIOS="echo fan15k fan1k fixed1000 fixed200 idle_ws idle_sse"

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'compare.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------- arguments
SUMMARIZE=""
while (($#)); do
    case $1 in
    --publish) PUBLISH=1 ;;
    --summarize)
        [[ $# -ge 2 ]] || die "usage: compare.sh --summarize reports/peers/compare-STAMP.jsonl [--publish]"
        SUMMARIZE=$2
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

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

# ---------------------------------------------------------------- tools
# jq, taskset (util-linux) and gnuplot: installed with apt-get when we are root,
# otherwise the exact command is printed.
ensure_tools() {
    local missing=() c
    for c in jq taskset gnuplot awk; do
        command -v "$c" >/dev/null || missing+=("$c")
    done
    ((${#missing[@]} == 0)) && return 0
    local pkgs="jq util-linux gnuplot-nox"
    if [[ " ${missing[*]} " == *" awk "* ]]; then pkgs="$pkgs gawk"; fi
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "missing: ${missing[*]}; installing with apt-get: $pkgs"
        # shellcheck disable=SC2086
        { DEBIAN_FRONTEND=noninteractive apt-get update &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; } >&2 ||
            die "apt-get could not install $pkgs (output above)"
        for c in "${missing[@]}"; do
            command -v "$c" >/dev/null || die "'$c' is still missing after installing $pkgs"
        done
    elif command -v apt-get >/dev/null; then
        die "missing: ${missing[*]}. Install them with: sudo apt-get update && sudo apt-get install -y --no-install-recommends $pkgs"
    else
        die "missing: ${missing[*]}. Install jq, taskset (util-linux) and gnuplot with your package manager"
    fi
}

# ---------------------------------------------------------------- reports
# Shared jq definitions: $meta, $res (all result lines), $ok (without errors),
# sel/med/ratio helpers and number formatting.
# shellcheck disable=SC2016
JQ_DEFS='
def median: map(select(. != null)) | sort
    | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def dec($n): if . == null then null else (. * pow(10; $n) | round) / pow(10; $n) end;
def r0: if . == null then "-" else (. | round | tostring) end;
def r1: if . == null then "-" else (dec(1) | tostring) end;
def r2: if . == null then "-" else (dec(2) | tostring) end;
def commas: (. | round | tostring) as $s
    | if ($s | length) <= 3 or ($s | startswith("-")) then $s
      else ($s[0:($s | length) - 3] | tonumber | commas) + "," + $s[($s | length) - 3:] end;
def mfmt: if . == null then "-" else ((. / 1e6 * 100 | round) / 100 | tostring) + "M" end;
def ratefmt: if . == null then "–" elif . >= 1e6 then ((. / 1e6 | dec(2) | tostring) + " M")
    else commas end;
def msfmt: if . == null then "–" elif . >= 100 then (round | commas) + " ms"
    elif . >= 10 then (dec(1) | tostring) + " ms" else (dec(2) | tostring) + " ms" end;
def nsdeliv: if .server_cpu_pct == null or (.deliveries_per_sec // 0) == 0 then null
    else .server_cpu_pct / 100 * 1e9 / .deliveries_per_sec end;
def percpu: if (.server_cpu_pct // 0) <= 0 or .msgs_per_sec == null then null
    else .msgs_per_sec / (.server_cpu_pct / 100) end;
def p99ms: if .latency_us.p99 == null then null else .latency_us.p99 / 1000 end;
(map(select(.kind == "meta")) | first) as $meta
| map(select(.kind == "result")) as $res
| ($res | map(select(.error == null))) as $ok
| def sel($p; $s): $ok | map(select(.peer == $p and .scenario == $s));
  def med($p; $s; f): [sel($p; $s)[] | f] | median;
  def ratios($s; f): [ $ok | map(select(.scenario == $s)) | group_by(.rep)[]
      | (map(select(.peer == "corecast")) | first) as $c | (map(select(.peer == "bun")) | first) as $b
      | select($c != null and $b != null) | ($c | f) as $x | ($b | f) as $y
      | select($x != null and $y != null and $y != 0) | $x / $y ];
  # The headline ratio is the ratio of the two medians (issue 15 states its targets
  # that way); the per-rep ratios stay in the detailed summary for the spread.
  def ratio($s; f): med("corecast"; $s; f) as $c | med("bun"; $s; f) as $b
      | if $c == null or $b == null or $b == 0 then null else $c / $b end;
  def rfmt: if . == null then "–" else (dec(2) | tostring) end;
  def sdef($s): $meta.scenario_defs[$s];
  def n0: if . == null then "–" else commas end;
'

summarize() { # RESULTS.jsonl -> detailed tables on stdout
    jq -rs --arg file "$1" "$JQ_DEFS"'
($ok | map(.peer) | unique) as $servers
| def fanrow($s; $r; last): [$s, ($r | map(.deliveries_per_sec) | median | mfmt), ($r | map(.published_per_sec) | median | r0),
   ($r | map(.latency_us.p50) | median | r0), ($r | map(.latency_us.p99) | median | r0),
   ($r | map(.server_cpu_pct) | median | r1), ($r | map(nsdeliv) | median | r0),
   ($r | map(.server_core_busy_pct) | median | r1), ($r | map(.loadgen_core_busy_pct) | median | r1),
   ($r | map(.lost) | max | r0), ($r | map(.server_closed.total) | add | r0), ($r | map(.connected.failed) | add | r0),
   ($r | sort_by(.rep) | map(last) | join(" "))];
"corecast vs Bun \($meta.bun) | git \($meta.git) (corecast binary \($meta.corecast_bin // "-") built \($meta.corecast_mtime // "-")) | \($meta.size) B messages, warmup \($meta.warmup_s) s + window \($meta.duration_s) s | server on core \($meta.server_cpu), loadgen on core \($meta.loadgen_cpu) | load at start \($meta.loadavg_start)",
( $meta.scenarios[] as $s | sdef($s) as $d | select($d != null) |
  if $d.kind == "echo" then
    "",
    "\($s): \($d.label), median of \($meta.reps)",
    (["server", "msgs/s", "p50_us", "p99_us", "srv_cpu%", "msgs/cpu-s", "srv_core%", "lg_core%", "lost(max)", "closed", "failed", "msgs/s per run"] | @tsv),
    ($servers[] as $p | sel($p; $s) as $r | select($r | length > 0) |
      [$p, ($r | map(.msgs_per_sec) | median | r0), ($r | map(.latency_us.p50) | median | r0),
       ($r | map(.latency_us.p99) | median | r0), ($r | map(.server_cpu_pct) | median | r1),
       ($r | map(percpu) | median | r0),
       ($r | map(.server_core_busy_pct) | median | r1), ($r | map(.loadgen_core_busy_pct) | median | r1),
       ($r | map(.lost) | max | r0), ($r | map(.server_closed.total) | add | r0), ($r | map(.connected.failed) | add | r0),
       ($r | sort_by(.rep) | map(.msgs_per_sec | r0) | join(" "))] | @tsv)
  elif $d.kind == "fanout" then
    "",
    "\($s): \($d.label), median of \($meta.reps)",
    (["server", "deliv/s", "pub/s", "p50_us", "p99_us", "srv_cpu%", "srv_ns/deliv", "srv_core%", "lg_core%", "lost(max)", "closed", "failed",
      (if $d.rate == 0 then "deliv/s per run" else "p99 per run" end)] | @tsv),
    ($servers[] as $p | sel($p; $s) as $r | select($r | length > 0) |
      fanrow($p; $r; (if $d.rate == 0 then .deliveries_per_sec | mfmt else .latency_us.p99 | r0 end)) | @tsv)
  else
    "",
    "\($s): \($d.label); VmRSS of a fresh server before, and \($meta.idle_sample_s) s after the ramp",
    (["server", "rep", "rss_before_kB", "rss_after_kB", "connected", "bytes/conn", "closed"] | @tsv),
    ($servers[] as $p | sel($p; $s)[] |
      [$p, (.rep | tostring), (.rss_before_kb | r0), (.rss_after_kb | r0), "\(.connected)/\(.connections)", (.bytes_per_conn | r0), (.server_closed.total | r0)] | @tsv)
  end ),
"",
"corecast / bun (median of per-rep ratios; >1 = corecast higher)",
(["metric", "ratio", "per rep"] | @tsv),
( $meta.scenarios[] as $s | sdef($s) as $d | select($d != null) |
  (if $d.kind == "echo" then
     [["\($s) msgs/s", ratios($s; .msgs_per_sec)], ["\($s) msgs per server CPU-s", ratios($s; percpu)],
      ["\($s) p50 latency", ratios($s; .latency_us.p50)], ["\($s) p99 latency", ratios($s; .latency_us.p99)],
      ["\($s) server CPU%", ratios($s; .server_cpu_pct)]]
   elif $d.kind == "fanout" then
     [["\($s) deliveries/s", ratios($s; .deliveries_per_sec)], ["\($s) p50 latency", ratios($s; .latency_us.p50)],
      ["\($s) p99 latency", ratios($s; .latency_us.p99)], ["\($s) server CPU%", ratios($s; .server_cpu_pct)],
      ["\($s) server CPU ns/delivery", ratios($s; nsdeliv)]]
   else [["\($s) bytes/conn", ratios($s; .bytes_per_conn)]] end)[]
  | select(.[1] | length > 0)
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

markdown_table() { # RESULTS.jsonl -> the Markdown table on stdout
    jq -rs "$JQ_DEFS"'
def ran($s): ($meta.scenarios | index($s)) != null and sdef($s) != null;
def cell($p; $s; f; fmt): med($p; $s; f) | fmt;
def fixedcell($p; $s): "\(med($p; $s; .server_cpu_pct) | if . == null then "–" else (dec(1) | tostring) + " %" end) / \(med($p; $s; p99ms) | msfmt)";
def row($lab; $b; $c; $r): "| \($lab) | \($b) | \($c) | \($r) |";
"Measured \($meta.date) at commit \($meta.git), Bun \($meta.bun_version), \(if $meta.reps == 1 then "1 run" else "\($meta.reps) alternating runs" end), medians; server on core \($meta.server_cpu), loadgen on core \($meta.loadgen_cpu).",
"",
"| scenario | Bun | corecast | corecast/Bun |",
"| --- | ---: | ---: | ---: |",
( if ran("echo") then
    row("echo msgs/s"; cell("bun"; "echo"; .msgs_per_sec; ratefmt); cell("corecast"; "echo"; .msgs_per_sec; ratefmt);
        ratio("echo"; .msgs_per_sec) | rfmt),
    row("**echo msgs per server CPU-second**"; cell("bun"; "echo"; percpu; ratefmt); cell("corecast"; "echo"; percpu; ratefmt);
        "**\(ratio("echo"; percpu) | rfmt)**"),
    row("echo p50 / p99 µs";
        "\(cell("bun"; "echo"; .latency_us.p50; n0)) / \(cell("bun"; "echo"; .latency_us.p99; n0))";
        "\(cell("corecast"; "echo"; .latency_us.p50; n0)) / \(cell("corecast"; "echo"; .latency_us.p99; n0))";
        "\(ratio("echo"; .latency_us.p50) | rfmt) / \(ratio("echo"; .latency_us.p99) | rfmt)")
  else empty end ),
( ("fan15k", "fan1k") as $s | select(ran($s)) |
    row("fan-out 1→\(sdef($s).subs | commas) deliveries/s"; cell("bun"; $s; .deliveries_per_sec; ratefmt);
        cell("corecast"; $s; .deliveries_per_sec; ratefmt); ratio($s; .deliveries_per_sec) | rfmt) ),
( ("fixed1000", "fixed200") as $s | select(ran($s)) |
    row("fixed \(sdef($s).rate | commas) msg/s → \(sdef($s).subs | commas): server CPU % / p99"; fixedcell("bun"; $s); fixedcell("corecast"; $s);
        "\(ratio($s; .server_cpu_pct) | rfmt) / \(ratio($s; .latency_us.p99) | rfmt)") ),
( ["idle_ws", "idle WebSocket"], ["idle_sse", "idle SSE"] | .[0] as $s | select(ran($s)) |
    row("\(.[1]) B/conn (\(sdef($s).conns | commas) connections)"; cell("bun"; $s; .bytes_per_conn; n0);
        cell("corecast"; $s; .bytes_per_conn; n0); ratio($s; .bytes_per_conn) | rfmt) ),
"",
"corecast/Bun is the ratio of the two medians; above 1 means corecast is higher: better for msgs/s, msgs per CPU-second and deliveries/s; worse for latency, CPU % and B/conn. Messages are \($meta.size) B; echo: \($meta.echo_connections) connections, pipeline \($meta.echo_pipeline); fan-out: 1 publisher (also a room member), max rate = \($meta.window) messages in flight; CPU % is the server process over the \($meta.duration_s) s window (100 % = one core)."
' "$1"
}

make_plot() { # RESULTS.jsonl SVG -> gnuplot chart (0 if written)
    local results=$1 svg=$2 base=${2%.svg} thr lat thr_tics lat_tics title
    # One line per scenario: label (gnuplot string, may hold \n), Bun, corecast.
    thr=$(jq -rs "$JQ_DEFS"'
def ran($s): ($meta.scenarios | index($s)) != null and sdef($s) != null;
[ (if ran("echo") then ["echo\\nmsgs per\\nCPU-second", ratio("echo"; percpu)] else empty end),
  (("fan15k", "fan1k") as $s | select(ran($s)) | ["fan-out\\n1→\(sdef($s).subs | commas)\\ndeliveries/s", ratio($s; .deliveries_per_sec)]),
  (("fixed1000", "fixed200") as $s | select(ran($s))
    | ["fixed \(sdef($s).rate | commas)/s\\nserver CPU %\\n(lower is better)", ratio($s; .server_cpu_pct)]) ]
| map(select(.[1] != null)) | to_entries[] | "\(.key)\t\(.value[0])\t1\t\(.value[1])"' "$results")
    lat=$(jq -rs "$JQ_DEFS"'
def ran($s): ($meta.scenarios | index($s)) != null and sdef($s) != null;
[ ("echo", "fan15k", "fan1k", "fixed1000", "fixed200") as $s | select(ran($s))
  | [(if $s == "echo" then "echo" elif sdef($s).rate == 0 then "fan-out\\n1→\(sdef($s).subs | commas)"
      else "fixed \(sdef($s).rate | commas)/s\\n→ \(sdef($s).subs | commas)" end),
     med("bun"; $s; p99ms), med("corecast"; $s; p99ms)] ]
| map(select(.[1] != null and .[2] != null)) | to_entries[] | "\(.key)\t\(.value[0])\t\(.value[1])\t\(.value[2])"' "$results")
    if [[ -z $thr && -z $lat ]]; then
        log "no scenario has results for both servers; no chart"
        return 1
    fi
    title=$(markdown_table "$results" | head -n1)
    title=${title//\"/}
    # Tic labels are gnuplot format strings: a literal % must be %%.
    thr_tics=$(awk -F'\t' '{ l = $2; gsub(/%/, "%%", l); printf "%s\"%s\" %s", (NR > 1 ? ", " : ""), l, $1 }' <<<"$thr")
    lat_tics=$(awk -F'\t' '{ l = $2; gsub(/%/, "%%", l); printf "%s\"%s\" %s", (NR > 1 ? ", " : ""), l, $1 }' <<<"$lat")
    local gp=$base/chart.gp thr_max lat_range
    thr_max=$(awk -F'\t' '{ m = ($3 > m ? $3 : m); m = ($4 > m ? $4 : m) } END { printf "%.3f", m * 1.2 }' <<<"$thr")
    lat_range=$(awk -F'\t' 'NR == 1 { lo = $3; hi = $3 } { for (i = 3; i <= 4; i++) { if ($i < lo) lo = $i; if ($i > hi) hi = $i } }
        END { printf "%g:%g", (lo > 0 ? lo / 2 : 0.01), hi * 4 }' <<<"$lat")
    mkdir -p "$base"
    {
        cat <<EOF
set terminal svg size 1280,560 dynamic enhanced font "Helvetica,12" background rgb "white"
set encoding utf8
set output "$svg"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border rgb "#333333"
set boxwidth 0.9
set grid ytics lc rgb "#dddddd"
set key top left horizontal
set xtics nomirror
set ytics nomirror
set bmargin 5
set datafile separator "\t"
set multiplot layout 1,2 title "corecast vs Bun\n$title" font ",12"
EOF
        if [[ -n $thr ]]; then
            # shellcheck disable=SC2016 # a gnuplot data block name, not a shell variable
            printf '$thr << EOD\n%s\nEOD\n' "$thr"
            cat <<EOF
set title "Throughput and efficiency, normalised to Bun = 1.0\n(higher is better, except the CPU % rows: lower is better)"
set xtics ($thr_tics) font ",10"
set ylabel "corecast / Bun"
set yrange [0:$thr_max]
set xrange [-0.6:$(($(wc -l <<<"$thr") - 1)).6]
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb "#555555"
plot \$thr using 3 title "Bun" lc rgb "#f4a261", \
     '' using 4 title "corecast" lc rgb "#2a6f97", \
     '' using (\$0 + 1.0/6):4:(sprintf("%.2f", \$4)) with labels offset 0,0.7 font ",10" notitle
unset arrow 1
EOF
        fi
        if [[ -n $lat ]]; then
            # shellcheck disable=SC2016 # a gnuplot data block name, not a shell variable
            printf '$lat << EOD\n%s\nEOD\n' "$lat"
            cat <<EOF
set title "p99 latency (ms, log scale; lower is better)"
set xtics ($lat_tics) font ",10"
set ylabel "p99 latency, ms"
set logscale y
set yrange [$lat_range]
set xrange [-0.6:$(($(wc -l <<<"$lat") - 1)).6]
set ytics (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
set format y "%g"
plot \$lat using 3 title "Bun" lc rgb "#f4a261", \
     '' using 4 title "corecast" lc rgb "#2a6f97", \
     '' using (\$0 - 1.0/6):3:(sprintf("%.3g", \$3)) with labels offset 0,0.7 font ",9" notitle, \
     '' using (\$0 + 1.0/6):4:(sprintf("%.3g", \$4)) with labels offset 0,0.7 font ",9" notitle
EOF
        fi
        echo "unset multiplot"
    } >"$gp"
    gnuplot "$gp" || { log "gnuplot failed (script: $gp)"; return 1; }
    return 0
}

publish() { # MD SVG: docs/img/peer-comparison.svg + the table between the markers
    local md=$1 svg=$2 f begin='<!-- peer-comparison:begin -->' end='<!-- peer-comparison:end -->'
    if [[ -s $svg ]]; then
        mkdir -p "$PUBLISH_ROOT/docs/img"
        cp "$svg" "$PUBLISH_ROOT/docs/img/peer-comparison.svg"
        log "published $PUBLISH_ROOT/docs/img/peer-comparison.svg"
    else
        log "no chart to publish"
    fi
    for f in "$PUBLISH_ROOT/README.md" "$PUBLISH_ROOT/docs/BENCHMARKS.md"; do
        if [[ ! -f $f ]] || ! grep -qxF "$begin" "$f" || ! grep -qxF "$end" "$f"; then
            log "no '$begin' / '$end' marker lines in $f; left unchanged"
            continue
        fi
        awk -v begin="$begin" -v end="$end" -v table="$md" '
            $0 == begin { print; print ""; while ((getline line < table) > 0) print line; print ""; skip = 1; next }
            $0 == end { skip = 0 }
            !skip { print }' "$f" >"$f.peer-tmp"
        cat "$f.peer-tmp" >"$f" # keeps the file's mode and inode
        rm -f "$f.peer-tmp"
        log "published the table into $f"
    done
}

report() { # RESULTS.jsonl: summary + table on stdout; .md and .svg next to it; --publish
    local results=$1 base=${1%.jsonl} svg=""
    summarize "$results"
    echo
    markdown_table "$results" | tee "$base.md"
    if make_plot "$results" "$base.svg"; then
        svg=$base.svg
        log "chart -> $svg"
    fi
    log "table -> $base.md"
    if [[ $PUBLISH == 1 ]]; then
        publish "$base.md" "$svg"
    fi
}

if [[ -n $SUMMARIZE ]]; then # re-print the summary of an earlier run (and redo its .md/.svg)
    [[ -r $SUMMARIZE ]] || die "cannot read $SUMMARIZE"
    ensure_tools
    jq -se 'map(select(.kind == "meta"))[0].scenario_defs != null' "$SUMMARIZE" >/dev/null ||
        die "$SUMMARIZE predates the scenario set of this script (no scenario_defs in its meta line)"
    report "$SUMMARIZE"
    exit 0
fi

# ---------------------------------------------------------------- prerequisites
ensure_tools
[[ -r /proc/self/stat ]] || die "/proc is required (Linux)"
for s in $SCENARIOS; do
    [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s' in SCENARIOS (known: $ALL_SCENARIOS)"
done
for v in REPS SIZE DURATION WARMUP ECHO_CONNS ECHO_PIPELINE SUBS_MAX SUBS_SMALL RATE_HI RATE_LO WINDOW \
    IDLE_CONNS IDLE_HOLD IDLE_SAMPLE IDLE_REPS SERVER_CPU LOADGEN_CPU PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((IDLE_HOLD > IDLE_SAMPLE)) || die "IDLE_HOLD ($IDLE_HOLD) must be longer than IDLE_SAMPLE ($IDLE_SAMPLE)"
((PORT_BASE >= 1024 && PORT_BASE < 65000)) || die "PORT_BASE out of range"
NCPU=$(getconf _NPROCESSORS_ONLN)
((SERVER_CPU < NCPU && LOADGEN_CPU < NCPU)) || die "need cores $SERVER_CPU and $LOADGEN_CPU; this machine has $NCPU"
CLK_TCK=$(getconf CLK_TCK)
NEED_FDS=$ECHO_CONNS
for n in $((SUBS_MAX + 1)) $((SUBS_SMALL + 1)) "$IDLE_CONNS"; do ((n > NEED_FDS)) && NEED_FDS=$n; done
[[ $(ulimit -n) == unlimited || $(ulimit -n) -gt $((NEED_FDS + 64)) ]] ||
    ulimit -n $((NEED_FDS + 1024)) 2>/dev/null ||
    die "RLIMIT_NOFILE $(ulimit -n) is too low for $NEED_FDS connections (raise it: ulimit -n $((NEED_FDS + 1024)))"

[[ $CORECAST == "$ROOT/target/release/corecast" && $LOADGEN == "$ROOT/target/release/loadgen" ]] || SKIP_BUILD=1
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found (or set SKIP_BUILD=1 with prebuilt binaries)"
    log "building corecast + loadgen (release; a no-op when up to date)"
    (cd "$ROOT" && cargo build --release -p corecast --bin corecast -p corecast-bench --bin loadgen) >&2 ||
        die "cargo build failed (SKIP_BUILD=1 runs the binaries already in target/release, if any)"
fi
[[ -x $CORECAST ]] || die "$CORECAST missing (build it: cargo build --release -p corecast --bin corecast)"
[[ -x $LOADGEN ]] || die "$LOADGEN missing (build it: cargo build --release -p corecast-bench --bin loadgen)"
if [[ " $SCENARIOS " == *" idle_sse "* ]] && ! "$LOADGEN" idle --help 2>/dev/null | grep -q -- '--sse'; then
    die "$LOADGEN has no 'idle --sse' (rebuild it: cargo build --release -p corecast-bench --bin loadgen), or leave idle_sse out of SCENARIOS"
fi

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
    BUN_REVISION=$("$BUN" --revision 2>/dev/null || "$BUN" --version)
    BUN_VERSION=$("$BUN" --version)
    [[ $BUN_VERSION == "$BUN_WANT"* ]] || log "warning: running bun $BUN_VERSION, package.json pins $BUN_WANT"
else
    BUN_REVISION=""
    BUN_VERSION=""
fi

# ---------------------------------------------------------------- output files
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR/compare-$STAMP"
RESULTS=$OUT_DIR/compare-$STAMP.jsonl
LOGS=$OUT_DIR/compare-$STAMP
: >"$RESULTS"

if [[ -z $CORECAST_CONFIG ]]; then # WebTransport (QUIC on UDP) is not part of this comparison
    CORECAST_CONFIG=$LOGS/corecast.yaml
    printf 'webtransport:\n  enabled: false\n' >"$CORECAST_CONFIG"
fi
[[ -r $CORECAST_CONFIG ]] || die "CORECAST_CONFIG=$CORECAST_CONFIG is not readable"

# The commit, "+dirty" if code that goes into the binaries has uncommitted changes
# (docs and reports do not count).
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- . ':(exclude)docs' ':(exclude)*.md' ':(exclude)reports' 2>/dev/null ||
    GIT_REV="$GIT_REV+dirty"
SCEN_DEFS=$(jq -nc --argjson subs_max "$SUBS_MAX" --argjson subs_small "$SUBS_SMALL" \
    --argjson rate_hi "$RATE_HI" --argjson rate_lo "$RATE_LO" --argjson idle "$IDLE_CONNS" \
    --argjson echo_conns "$ECHO_CONNS" --argjson pipeline "$ECHO_PIPELINE" '
    {echo: {kind: "echo", conns: $echo_conns, label: "echo, \($echo_conns) connections, pipeline \($pipeline)"},
     fan15k: {kind: "fanout", subs: $subs_max, rate: 0, label: "fan-out max rate, 1 publisher -> \($subs_max) subscribers"},
     fan1k: {kind: "fanout", subs: $subs_small, rate: 0, label: "fan-out max rate, 1 publisher -> \($subs_small) subscribers"},
     fixed1000: {kind: "fanout", subs: $subs_small, rate: $rate_hi, label: "fixed \($rate_hi) msg/s -> \($subs_small) subscribers"},
     fixed200: {kind: "fanout", subs: $subs_small, rate: $rate_lo, label: "fixed \($rate_lo) msg/s -> \($subs_small) subscribers"},
     idle_ws: {kind: "idle", conns: $idle, label: "idle WebSocket, \($idle) connections (/ws/chat)"},
     idle_sse: {kind: "idle", conns: $idle, label: "idle SSE, \($idle) streams (/sse)"}}')
read -r -a SCEN_LIST <<<"$SCENARIOS"
jq -nc --arg stamp "$STAMP" --arg date "$(date +%F)" --arg git "$GIT_REV" --arg bun "$BUN_REVISION" --arg bun_version "$BUN_VERSION" \
    --arg corecast "$("$CORECAST" --version 2>&1 | head -n1)" --arg kernel "$(uname -r)" \
    --arg corecast_bin "$CORECAST" --arg corecast_mtime "$(date -r "$CORECAST" -u +%FT%TZ)" \
    --arg corecast_config "$CORECAST_CONFIG" \
    --arg loadgen_bin "$LOADGEN" --arg loadgen_mtime "$(date -r "$LOADGEN" -u +%FT%TZ)" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --argjson ncpu "$NCPU" --argjson reps "$REPS" --argjson size "$SIZE" \
    --argjson duration "$DURATION" --argjson warmup "$WARMUP" --argjson window "$WINDOW" \
    --argjson echo_conns "$ECHO_CONNS" --argjson echo_pipeline "$ECHO_PIPELINE" \
    --argjson subs_max "$SUBS_MAX" --argjson subs_small "$SUBS_SMALL" --argjson rate_hi "$RATE_HI" --argjson rate_lo "$RATE_LO" \
    --argjson server_cpu "$SERVER_CPU" --argjson loadgen_cpu "$LOADGEN_CPU" \
    --argjson idle_conns "$IDLE_CONNS" --argjson idle_hold "$IDLE_HOLD" --argjson idle_sample "$IDLE_SAMPLE" \
    --argjson idle_reps "$IDLE_REPS" --argjson defs "$SCEN_DEFS" \
    --args '{kind: "meta", stamp: $stamp, date: $date, git: $git, corecast: $corecast, bun: $bun, bun_version: $bun_version,
      kernel: $kernel, corecast_bin: $corecast_bin, corecast_mtime: $corecast_mtime, corecast_config: $corecast_config,
      loadgen_bin: $loadgen_bin, loadgen_mtime: $loadgen_mtime,
      ncpu: $ncpu, loadavg_start: $loadavg, reps: $reps, size: $size, duration_s: $duration, warmup_s: $warmup,
      window: $window, echo_connections: $echo_conns, echo_pipeline: $echo_pipeline,
      subs_max: $subs_max, subs_small: $subs_small, rate_hi: $rate_hi, rate_lo: $rate_lo,
      server_cpu: $server_cpu, loadgen_cpu: $loadgen_cpu,
      idle_connections: $idle_conns, idle_hold_s: $idle_hold, idle_sample_s: $idle_sample, idle_reps: $idle_reps,
      scenarios: $ARGS.positional, scenario_defs: $defs}' "${SCEN_LIST[@]}" >>"$RESULTS"
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
    corecast)
        taskset -c "$SERVER_CPU" "$CORECAST" serve --listen "127.0.0.1:$PORT" --shards 1 -c "$CORECAST_CONFIG" \
            >"$slog" 2>&1 &
        ;;
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

run_load() { # SERVER SCENARIO REP: echo or fan-out with the server's CPU over the window
    local server=$1 scenario=$2 rep=$3
    local tag="$scenario-$server-r$rep"
    local out=$LOGS/$tag.loadgen.json err=$LOGS/$tag.loadgen.err
    local -a cmd
    case $scenario in
    echo)
        cmd=(echo --path /ws/echo --connections "$ECHO_CONNS" --size "$SIZE" --pipeline "$ECHO_PIPELINE")
        ;;
    fan15k | fan1k | fixed1000 | fixed200)
        local subs=$SUBS_SMALL rate=0
        case $scenario in
        fan15k) subs=$SUBS_MAX ;;
        fixed1000) rate=$RATE_HI ;;
        fixed200) rate=$RATE_LO ;;
        esac
        cmd=(fanout --path /ws/chat --subscribers "$subs" --publishers 1 --size "$SIZE" --rate "$rate")
        if ((rate == 0)); then cmd+=(--window "$WINDOW"); fi
        ;;
    esac
    start_server "$server" "$tag"
    log "($scenario) $server rep $rep: port $PORT, pid $SRV_PID: loadgen ${cmd[*]}"
    taskset -c "$LOADGEN_CPU" "$LOADGEN" "${cmd[@]}" --addr "127.0.0.1:$PORT" \
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
    if [[ $scenario == echo ]]; then
        tail -n1 "$RESULTS" | jq -r '"  -> \(.msgs_per_sec) msgs/s, p50 \(.latency_us.p50) us, p99 \(.latency_us.p99) us, lost \(.lost), closed \(.server_closed.total), failed \(.connected.failed), server cpu \(.server_cpu_pct)% (core busy \(.server_core_busy_pct)%)"' >&2
    else
        tail -n1 "$RESULTS" | jq -r '"  -> \(.deliveries_per_sec) deliv/s, p50 \(.latency_us.p50) us, p99 \(.latency_us.p99) us, lost \(.lost), closed \(.server_closed.total), failed \(.connected.failed), server cpu \(.server_cpu_pct)% (core busy \(.server_core_busy_pct)%)"' >&2
    fi
}

run_idle() { # SERVER SCENARIO(idle_ws|idle_sse) REP
    local server=$1 scenario=$2 rep=$3
    local tag="$scenario-$server-r$rep"
    local out=$LOGS/$tag.loadgen.json err=$LOGS/$tag.loadgen.err
    local -a cmd=(idle --path /ws/chat)
    if [[ $scenario == idle_sse ]]; then cmd=(idle --sse --path /sse); fi
    start_server "$server" "$tag"
    sleep 1
    local rss0 rss1=""
    rss0=$(vmrss_kb "$SRV_PID")
    log "($scenario) $server rep $rep: port $PORT, pid $SRV_PID, idle RSS ${rss0} kB; loadgen ${cmd[*]} --connections $IDLE_CONNS"
    taskset -c "$LOADGEN_CPU" "$LOADGEN" "${cmd[@]}" --addr "127.0.0.1:$PORT" \
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
    local alive=1
    kill -0 "$SRV_PID" 2>/dev/null || alive=0
    stop_server
    if ((ok == 0)) || [[ -z $rss1 ]] || ! jq -e . "$out" >/dev/null 2>&1; then
        record_error "$server" "$scenario" "$rep" "loadgen idle exit $rc, no usable result (see $err)"
        return 0
    fi
    jq -c --arg server "$server" --arg scenario "$scenario" --argjson rep "$rep" \
        --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson rc "$rc" --argjson alive "$alive" \
        '{kind: "result", peer: $server, scenario: $scenario, rep: $rep, rss_before_kb: $rss0, rss_after_kb: $rss1,
          bytes_per_conn: (if .connected > 0 then (($rss1 - $rss0) * 1024 / .connected | round) else null end),
          bytes_per_conn_nominal: (($rss1 - $rss0) * 1024 / .connections | round),
          loadgen_exit: $rc, server_alive_at_end: ($alive == 1)} + .' "$out" >>"$RESULTS"
    tail -n1 "$RESULTS" | jq -r '"  -> RSS \(.rss_before_kb) -> \(.rss_after_kb) kB, \(.connected)/\(.connections) connected, \(.bytes_per_conn) B/conn, closed \(.server_closed.total)"' >&2
}

# ---------------------------------------------------------------- run
read -r -a SRV_LIST <<<"$SERVERS"
LOAD_SCEN=() IDLE_SCEN=()
for s in "${SCEN_LIST[@]}"; do
    case $s in
    idle_*) IDLE_SCEN+=("$s") ;;
    *) LOAD_SCEN+=("$s") ;;
    esac
done
server_order() { # REP -> ORDER: the server list, reversed on even reps
    ORDER=("${SRV_LIST[@]}")
    if (($1 % 2 == 0)); then
        ORDER=()
        local i
        for ((i = ${#SRV_LIST[@]} - 1; i >= 0; i--)); do ORDER+=("${SRV_LIST[i]}"); done
    fi
}
log "servers: ${SRV_LIST[*]}; bun: ${BUN_REVISION:-n/a}; scenarios: ${SCEN_LIST[*]}; reps $REPS (idle $IDLE_REPS); load $(cut -d' ' -f1-3 /proc/loadavg)"
if ((${#LOAD_SCEN[@]} > 0)); then
    for ((rep = 1; rep <= REPS; rep++)); do
        server_order "$rep"
        for s in "${ORDER[@]}"; do
            for scen in "${LOAD_SCEN[@]}"; do
                run_load "$s" "$scen" "$rep"
            done
        done
    done
fi
if ((${#IDLE_SCEN[@]} > 0)); then
    for ((rep = 1; rep <= IDLE_REPS; rep++)); do
        server_order "$rep"
        for s in "${ORDER[@]}"; do
            for scen in "${IDLE_SCEN[@]}"; do
                run_idle "$s" "$scen" "$rep"
            done
        done
    done
fi

report "$RESULTS"
