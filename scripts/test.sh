#!/usr/bin/env bash
# The project's single test command (also what CI runs via .ci/run):
#   0. scripts/build-deps.sh        cmake, clang, libclang (quiche's BoringSSL build)
#   1. scripts/setup-test-deps.sh   Python venv (websockets, aioquic, kosoku, pytest, pyjwt), tests/node
#                                   node_modules (npm ci), Debian's chromium and redis-server
#   2. scripts/check-layers.py (imports point down the layers), cargo fmt --check,
#      cargo clippy -D warnings                         (fast fail)
#      cargo check -p corecast --features otlp         (CI, or OTLP_CHECK=1)
#   3. cargo build --release corecast + examples        (used by every suite), and
#      route_probe (tests/src/bin: the router application test_router.py drives)
#   4. cargo test --workspace      unit tests + tests/ end-to-end (CORECAST_BIN=release)
#      scripts/minimal-build.sh     corecast --no-default-features: no quiche/redis/JWT,
#                                   clippy, unit tests + engine/tests/embed_bare.rs
#      scripts/fuzz-smoke.sh        every libFuzzer target in fuzz/ for FUZZ_SECONDS (20)
#      scripts/check-deploy.sh      deploy/ (Dockerfile, seccomp profile, compose, systemd
#                                   unit) against the release binary; builds the image
#                                   only when a docker daemon answers
#   5. pytest tests/python          websockets and aioquic (WebTransport) against the server
#   6. node --test tests/node       eventsource / ws / headless Chromium (SSE, resume,
#                                   WebTransport)
#   7. tests/autobahn/run.sh        Autobahn conformance vs tests/autobahn/expected.json, strict,
#                                   compression on (1-13) and off (1-10)
# Stages 4-7 (and the fuzz smoke and deploy checks) all run even if one fails; the summary at the end lists each.
# Environment: TEST_THREADS (default 4) for cargo test; AUTOBAHN_FULL=1 runs
# every Autobahn case instead of the CI selection; SKIP_LINT=1 skips fmt and
# clippy locally (ignored when CI is set).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CI="${CI:-}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
LOGS="$ROOT/reports/test-logs"
mkdir -p "$LOGS"

STAGES=()
RESULTS=()
TIMES=()
FAILED=0
PASSED_TESTS=0
FAILED_TESTS=0

banner() { printf '\n==== %s ====\n' "$*"; }

# run_stage NAME LOGFILE CMD...: runs CMD, tee-ing output to LOGFILE, and
# records PASS/FAIL; returns CMD's status.
run_stage() {
  local name="$1" log="$2"
  shift 2
  banner "$name"
  local start=$SECONDS rc=0
  "$@" 2>&1 | tee "$log" || rc=$?
  STAGES+=("$name")
  TIMES+=("$((SECONDS - start))s")
  if [ "$rc" -eq 0 ]; then RESULTS+=("PASS"); else RESULTS+=("FAIL (exit $rc)"); FAILED=1; fi
  return "$rc"
}

summary() {
  banner "summary"
  local i
  for i in "${!STAGES[@]}"; do
    printf '  %-34s %-14s %s\n' "${STAGES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
  done
  echo "  logs: reports/test-logs/, Autobahn report: reports/autobahn/index.html"
  if [ "$FAILED" -ne 0 ]; then echo "RESULT: FAIL"; else echo "RESULT: PASS"; fi
  # Plain closing line (all suites together).
  echo "total: ${PASSED_TESTS} passed, ${FAILED_TESTS} failed"
}

# count_cargo LOG / count_pytest LOG / count_autobahn LOG: add to the totals.
count_cargo() {
  local p f
  p=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$1" |
    awk '{s+=$4} END {print s+0}')
  f=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$1" |
    awk '{s+=$6} END {print s+0}')
  PASSED_TESTS=$((PASSED_TESTS + p))
  FAILED_TESTS=$((FAILED_TESTS + f))
}
count_pytest() {
  local last p f e
  last=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$1" | tail -1 || true)
  p=$(grep -Eo '[0-9]+ passed' <<<"$last" | awk '{print $1}' || true)
  f=$(grep -Eo '[0-9]+ failed' <<<"$last" | awk '{print $1}' || true)
  e=$(grep -Eo '[0-9]+ errors?' <<<"$last" | awk '{print $1}' || true)
  PASSED_TESTS=$((PASSED_TESTS + ${p:-0}))
  FAILED_TESTS=$((FAILED_TESTS + ${f:-0} + ${e:-0}))
}
count_node() {
  # node --test's TAP reporter ends with "# pass N" / "# fail N" / "# cancelled N".
  local p f c
  p=$(grep -E '^# pass [0-9]+$' "$1" | tail -1 | awk '{print $3}' || true)
  f=$(grep -E '^# fail [0-9]+$' "$1" | tail -1 | awk '{print $3}' || true)
  c=$(grep -E '^# cancelled [0-9]+$' "$1" | tail -1 | awk '{print $3}' || true)
  if [ -z "$p" ] && [ -z "$f" ]; then
    f=1 # the runner never got to its summary (no node, no node_modules, crash)
  fi
  PASSED_TESTS=$((PASSED_TESTS + ${p:-0}))
  FAILED_TESTS=$((FAILED_TESTS + ${f:-0} + ${c:-0}))
}
count_fuzz() {
  local line p f
  line=$(grep -E '^fuzz: [0-9]+ passed, [0-9]+ failed$' "$1" | tail -1 || true)
  if [ -z "$line" ]; then
    FAILED_TESTS=$((FAILED_TESTS + 1)) # the script stopped before running targets
    return
  fi
  p=$(awk '{print $2}' <<<"$line")
  f=$(awk '{print $4}' <<<"$line")
  PASSED_TESTS=$((PASSED_TESTS + p))
  FAILED_TESTS=$((FAILED_TESTS + f))
}
count_deploy() {
  # scripts/check-deploy.py ends with "deploy: N passed, N failed, N skipped".
  local line p f
  line=$(grep -E '^deploy: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$1" | tail -1 || true)
  if [ -z "$line" ]; then
    FAILED_TESTS=$((FAILED_TESTS + 1)) # it stopped before its summary
    return
  fi
  p=$(awk '{print $2}' <<<"$line")
  f=$(awk '{print $4}' <<<"$line")
  PASSED_TESTS=$((PASSED_TESTS + p))
  FAILED_TESTS=$((FAILED_TESTS + f))
}
count_autobahn() {
  # One summary line per pass (compression on, compression off).
  local p f
  p=$(grep -E '^autobahn: [0-9]+ passed, [0-9]+ failed$' "$1" | awk '{s+=$2} END {print s+0}')
  f=$(grep -E '^autobahn: [0-9]+ passed, [0-9]+ failed$' "$1" | awk '{s+=$4} END {print s+0}')
  PASSED_TESTS=$((PASSED_TESTS + p))
  FAILED_TESTS=$((FAILED_TESTS + f))
}

# --- fast-fail stages --------------------------------------------------------
fast_fail() {
  if ! run_stage "$@"; then
    summary
    exit 1
  fi
}
fast_fail "build deps (cmake, clang)" "$LOGS/build-deps.log" bash scripts/build-deps.sh
fast_fail "setup test deps" "$LOGS/setup.log" bash scripts/setup-test-deps.sh
fast_fail "layering check" "$LOGS/layers.log" python3 scripts/check-layers.py
if [ "${SKIP_LINT:-0}" = "1" ] && [ -z "$CI" ]; then
  echo "SKIP_LINT=1: skipping cargo fmt --check and cargo clippy (never in CI)"
else
  fast_fail "cargo fmt --check" "$LOGS/fmt.log" cargo fmt --all -- --check
  fast_fail "cargo clippy -D warnings" "$LOGS/clippy.log" \
    cargo clippy --workspace --all-targets -- -D warnings
fi
# The `otlp` feature (OpenTelemetry span export) is off by default; make sure it
# still compiles. A check, not a build: in CI, or locally with OTLP_CHECK=1.
if [ -n "$CI" ] || [ "${OTLP_CHECK:-0}" = "1" ]; then
  fast_fail "cargo check --features otlp" "$LOGS/otlp-check.log" \
    cargo check -p corecast --features otlp
fi
fast_fail "cargo build --release corecast" "$LOGS/build.log" \
  cargo build --release -p corecast --bin corecast --examples
fast_fail "cargo build --release route_probe" "$LOGS/build-probe.log" \
  cargo build --release -p corecast-tests --bin route_probe

export CORECAST_BIN="$ROOT/target/release/corecast"
echo "CORECAST_BIN=$CORECAST_BIN"
export ROUTE_PROBE_BIN="$ROOT/target/release/route_probe"
echo "ROUTE_PROBE_BIN=$ROUTE_PROBE_BIN"

# --- test suites (all run; failures reported at the end) ---------------------
run_stage "cargo test --workspace" "$LOGS/cargo-test.log" \
  cargo test --workspace --no-fail-fast -- --test-threads "${TEST_THREADS:-4}" || true
count_cargo "$LOGS/cargo-test.log"

# The engine without default features (WebSocket/SSE only): no quiche, redis, JWT.
run_stage "corecast --no-default-features" "$LOGS/minimal.log" bash scripts/minimal-build.sh || true
count_cargo "$LOGS/minimal.log"

# libFuzzer targets in fuzz/, FUZZ_SECONDS (default 20) each; counts targets.
run_stage "fuzz smoke (fuzz/)" "$LOGS/fuzz.log" bash scripts/fuzz-smoke.sh || true
count_fuzz "$LOGS/fuzz.log"

# Container and service files (deploy/) checked against the release binary.
run_stage "deploy files (deploy/)" "$LOGS/deploy.log" bash scripts/check-deploy.sh || true
count_deploy "$LOGS/deploy.log"

pytest_stage() {
  local rc=0
  "$ROOT/tests/python/.venv/bin/python" -m pytest "$ROOT/tests/python" -v || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests (exit 5): treating as failure"
    return 1
  fi
  return "$rc"
}
run_stage "pytest tests/python" "$LOGS/pytest.log" pytest_stage || true
count_pytest "$LOGS/pytest.log"

# A subshell: the cd must not leak into the rest of the script.
node_stage() (
  cd "$ROOT/tests/node"
  if ! command -v node >/dev/null 2>&1; then
    echo "node tests: node not found (scripts/setup-test-deps.sh installs it)"
    return 1
  fi
  if [ "$(node -e 'process.stdout.write(process.versions.node.split(".")[0])')" -lt 20 ]; then
    echo "node tests: node $(node --version) is too old (need >= 20)"
    return 1
  fi
  if [ ! -d node_modules/eventsource ] || [ ! -d node_modules/playwright-core ]; then
    echo "node tests: tests/node/node_modules missing (scripts/setup-test-deps.sh runs npm ci)"
    return 1
  fi
  node --test --test-reporter=tap --test-concurrency=1 test/*.test.js
)
run_stage "node tests (tests/node)" "$LOGS/node.log" node_stage || true
count_node "$LOGS/node.log"

AUTOBAHN_ARGS=()
if [ "${AUTOBAHN_FULL:-0}" = "1" ]; then AUTOBAHN_ARGS+=(--full); fi
run_stage "autobahn (kosoku)" "$LOGS/autobahn.log" \
  bash tests/autobahn/run.sh "${AUTOBAHN_ARGS[@]+"${AUTOBAHN_ARGS[@]}"}" || true
count_autobahn "$LOGS/autobahn.log"

summary
exit "$FAILED"
