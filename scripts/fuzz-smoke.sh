#!/usr/bin/env bash
# Build every libFuzzer target in fuzz/ and run each for a short while.
#
#   scripts/fuzz-smoke.sh                 # every target, FUZZ_SECONDS (20) each
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh ws_decoder inflate
#
# Toolchain: the targets use libfuzzer-sys, but are built here with the STABLE
# toolchain and the coverage flags cargo-fuzz passes for `--sanitizer none`
# (SanitizerCoverage via -Cpasses=sancov-module), so neither nightly nor
# cargo-fuzz has to be installed (CI machines have one toolchain and cannot
# fetch another). The targets are safe Rust, so AddressSanitizer adds little;
# debug assertions and overflow checks stay on (fuzz/Cargo.toml), so arithmetic
# bugs crash. With nightly and cargo-fuzz installed, `cargo fuzz run <target>`
# in this repository works too (see docs/TESTING.md).
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 20)
#   FUZZ_TARGET_DIR  cargo target dir for the instrumented build (default
#                    fuzz/target: never a normal build's dir, the flags differ)
#   FUZZ_RSS_MB      libFuzzer's memory limit per target (default 2048)
#   FUZZ_SKIP_BUILD=1  run the binaries already built
# Seeds: fuzz/corpus/<target>/ (committed, read only here). What libFuzzer
# finds goes to fuzz/corpus-grown/<target>/ (ignored by git); crashes to
# fuzz/artifacts/<target>/; full logs to reports/fuzz/<target>.log.
# Exit status: 0 when every target ran its time without a crash, 1 otherwise.
# The last line is "fuzz: N passed, N failed" (targets).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-20}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$FUZZ/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
LOGS="$ROOT/reports/fuzz"
mkdir -p "$LOGS"

if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  TARGETS=()
  for f in "$FUZZ"/fuzz_targets/*.rs; do
    TARGETS+=("$(basename "$f" .rs)")
  done
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "fuzz: cargo not found (install Rust with rustup)" >&2
  exit 1
fi
# libfuzzer-sys compiles libFuzzer itself, which is C++.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 &&
  ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz: no C++ compiler (libfuzzer-sys builds libFuzzer): apt-get install g++" >&2
  exit 1
fi

HOST="$(rustc -vV | sed -n 's/^host: //p')"
# What `cargo fuzz build --sanitizer none` passes (minus nightly-only flags).
# --target keeps them off build scripts and proc macros.
FLAGS=(
  --cfg fuzzing
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
)
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }${FLAGS[*]}"

if [ "${FUZZ_SKIP_BUILD:-0}" != "1" ]; then
  echo "fuzz: building ${#TARGETS[@]} targets ($(rustc --version), target dir $CARGO_TARGET_DIR)"
  start=$SECONDS
  bins=()
  for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
  (cd "$FUZZ" && cargo build --release --locked --target "$HOST" "${bins[@]}")
  echo "fuzz: build took $((SECONDS - start))s"
fi

BIN_DIR="$CARGO_TARGET_DIR/$HOST/release"
passed=0
failed=0
ROWS=()
for t in "${TARGETS[@]}"; do
  bin="$BIN_DIR/$t"
  if [ ! -x "$bin" ]; then
    echo "fuzz: $t: binary $bin missing" >&2
    failed=$((failed + 1))
    ROWS+=("| $t | - | - | - | - | - | not built |")
    continue
  fi
  seeds="$FUZZ/corpus/$t"
  grown="$FUZZ/corpus-grown/$t"
  artifacts="$FUZZ/artifacts/$t"
  mkdir -p "$grown" "$artifacts" "$seeds"
  log="$LOGS/$t.log"
  echo "fuzz: $t for ${SECONDS_EACH}s (seeds: $(find "$seeds" -type f | wc -l))"
  rc=0
  t0=$SECONDS
  # The first corpus dir is where new inputs are written; the seeds stay as committed.
  "$bin" "$grown" "$seeds" \
    -max_total_time="$SECONDS_EACH" \
    -rss_limit_mb="$RSS_MB" \
    -timeout=10 \
    -print_final_stats=1 \
    -artifact_prefix="$artifacts/" \
    </dev/null >"$log" 2>&1 || rc=$?
  took=$((SECONDS - t0))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  # "#N DONE cov: X ft: Y corp: N/Sb ..." (or the last pulse line if it crashed).
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(grep -Eo 'cov: [0-9]+' <<<"$last" | awk '{print $2}' || true)
  corp=$(grep -Eo 'corp: [0-9]+/[0-9A-Za-z]+' <<<"$last" | awk '{print $2}' || true)
  if [ "$rc" -eq 0 ] && [ -n "$execs" ]; then
    passed=$((passed + 1))
    verdict="0 crashes"
  else
    failed=$((failed + 1))
    verdict="FAILED (exit $rc)"
    echo "fuzz: $t FAILED (exit $rc); end of $log:" >&2
    tail -40 "$log" >&2
    for a in "$artifacts"/*; do
      [ -e "$a" ] || continue
      echo "fuzz: reproduce with: $bin $a" >&2
    done
  fi
  echo "fuzz: $t: ${execs:-?} execs in ${took}s, ${rate:-?} exec/s, cov ${cov:-?}, corpus ${corp:-?}, peak RSS ${rss:-?} MB: $verdict"
  ROWS+=("| $t | ${execs:-?} | ${took}s | ${rate:-?} | ${corp:-?} | ${cov:-?} | $verdict |")
done

echo
echo "| target | execs | time | exec/s | corpus (inputs/bytes) | coverage (edges) | result |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
printf '%s\n' "${ROWS[@]}"
echo
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
