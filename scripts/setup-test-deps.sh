#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, idempotently and
# without asking anything (safe under CI=true with no stdin):
#   - a Python 3 with the venv module (Debian's python3-venv only if it is missing),
#   - tests/python/.venv with pinned websockets, kosoku (Autobahn cases), pytest,
#     aioquic (the WebTransport client of tests/python/test_webtransport.py),
#     pyjwt (tokens for the router and streaming tests), prometheus_client (its
#     exposition parser checks GET /metrics) and pyyaml (scripts/check-deploy.py
#     reads deploy/docker-compose.yml),
#   - tests/node/node_modules from tests/node/package-lock.json (`npm ci`: pinned
#     eventsource, ws, playwright-core) with the machine's Node.js (>= 20; Debian's
#     nodejs + npm are installed only when node is missing altogether),
#   - Debian's chromium (/usr/bin/chromium) for the headless-browser test,
#   - Debian's redis-server (when no `redis-server` is on PATH) for the cluster tests
#     (tests/tests/cluster.rs, tests/python/test_cluster.py) and benches/cluster.sh;
#     each test starts its own on a free loopback port, never the system service.
#   - make, jq and taskset (util-linux): make for the BoringSSL build (cmake
#     generates Makefiles), jq and taskset for benches/cluster.sh,
#     benches/regression.sh and benches/peers/compare.sh.
#   - strace and python3-seccomp, for scripts/check-deploy.sh's seccomp checks
#     (optional: without them those checks are skipped, saying so).
# Node.js older than 20 (or none) fails the set-up with the exact install command.
# The Chromium step never fails it: when it cannot be done it says why, and the
# "node tests" stage of scripts/test.sh then fails with it.
# Packages are installed with apt-get (after apt-get update) as root or with
# passwordless sudo; otherwise the exact command is printed and the set-up stops.
# Re-running it is cheap: each step checks first and prints what it installs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/tests/python/.venv"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

# Pinned Python test dependencies (bump deliberately; the marker file below
# makes the venv reinstall when this list changes).
PY_PKGS=(websockets==17.4 kosoku==0.1.0 pytest==9.2.0 aioquic==1.7.2 pyjwt==2.15.1 prometheus_client==0.26.0 pyyaml==6.0.3)

log() { printf '[setup-test-deps] %s\n' "$*"; }

APT_UPDATED=0
apt_install() {
  # apt_install PKG...: install Debian packages that are not installed yet.
  local missing=()
  local p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    log "ERROR: need Debian packages ${missing[*]} but apt-get is not available"
    exit 1
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
      log "ERROR: need Debian packages ${missing[*]}; not root and no passwordless sudo. Run:"
      log "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
      log "then re-run bash scripts/setup-test-deps.sh"
      exit 1
    fi
    sudo=(sudo -n)
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    "${sudo[@]}" apt-get update -qq </dev/null
    APT_UPDATED=1
  fi
  log "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
}

# 1. A Python 3 (>= 3.10, kosoku's minimum) that can create virtual environments.
PY=""
for cand in python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 &&
    "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
    PY="$(command -v "$cand")"
    break
  fi
done
if [ -z "$PY" ]; then
  apt_install python3
  PY=/usr/bin/python3
fi
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  # Debian splits venv/ensurepip out of the interpreter package.
  PY=/usr/bin/python3
  apt_install python3 python3-venv
fi
log "python: $PY ($("$PY" --version 2>&1))"

# 2. The virtual environment with pinned packages.
MARKER="$VENV/.corecast-deps"
WANT="${PY_PKGS[*]}"
if [ -x "$VENV/bin/python" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] &&
  "$VENV/bin/python" -c 'import websockets, kosoku, pytest, aioquic, jwt, prometheus_client, yaml' >/dev/null 2>&1; then
  log "venv up to date: $VENV ($WANT)"
else
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    "$PY" -m venv "$VENV"
  fi
  log "pip installing into venv: $WANT"
  "$VENV/bin/python" -m pip install -q "${PY_PKGS[@]}" </dev/null
  printf '%s' "$WANT" >"$MARKER"
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
print("[setup-test-deps] venv packages: " + ", ".join(
    f"{n}=={md.version(n)}" for n in ("websockets", "kosoku", "pytest", "aioquic", "pyjwt", "prometheus_client", "pyyaml")))
PY
# 3. Node.js test dependencies.
NODE_DIR="$ROOT/tests/node"
node_major() { node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }
node_help() {
  # What to run to get Node.js >= 20 (Debian 13 ships 20; Debian 12 ships 18).
  log "  Debian 13 (trixie) or newer: sudo apt-get install -y nodejs npm"
  log "  Debian 12 / Ubuntu (NodeSource): curl -fsSL https://deb.nodesource.com/setup_20.x | sudo -E bash - && sudo apt-get install -y nodejs"
  log "  any Linux, no root (nvm): curl -o- https://raw.githubusercontent.com/nvm-sh/nvm/v0.40.3/install.sh | bash && nvm install 20"
  log "then re-run bash scripts/setup-test-deps.sh"
}
if ! command -v node >/dev/null 2>&1; then
  # Debian's nodejs is 20 on trixie but 18 on bookworm: installed only when node is
  # missing altogether, and checked below like any other node.
  (apt_install nodejs npm) || log "WARNING: could not install nodejs/npm with apt-get"
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "ERROR: node and npm are needed for the node tests (tests/node) and were not found. Install Node.js 20 or newer:"
  node_help
  exit 1
elif [ "$(node_major)" -lt 20 ]; then
  log "ERROR: node $(node --version) at $(command -v node) is older than 20 (eventsource 4 and node --test need >= 20). Install Node.js 20 or newer:"
  node_help
  exit 1
else
  NODE_MARKER="$NODE_DIR/node_modules/.corecast-deps"
  NODE_WANT="$(node --version) $(sha256sum "$NODE_DIR/package-lock.json" | cut -d' ' -f1)"
  if [ -f "$NODE_MARKER" ] && [ "$(cat "$NODE_MARKER")" = "$NODE_WANT" ]; then
    log "node_modules up to date: $NODE_DIR (node $(node --version))"
  else
    log "npm ci in $NODE_DIR (node $(node --version), npm $(npm --version 2>/dev/null))"
    if (cd "$NODE_DIR" && CI=true npm ci --no-audit --no-fund --loglevel=error </dev/null); then
      printf '%s' "$NODE_WANT" >"$NODE_MARKER"
    else
      log "WARNING: npm ci failed: the node tests will fail"
    fi
  fi
  (cd "$NODE_DIR" && node -e '
    const l = require("./package-lock.json").packages;
    const v = ["eventsource", "ws", "playwright-core"].map((n) => `${n}@${(l["node_modules/" + n] || {}).version}`);
    console.log("[setup-test-deps] node packages (lock): " + v.join(", "));') || true
fi

# 4. Chromium for the browser test (Debian's package; playwright-core drives it).
if [ -x /usr/bin/chromium ]; then
  log "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
else
  (apt_install chromium) || true
  if [ -x /usr/bin/chromium ]; then
    log "chromium installed: $(/usr/bin/chromium --version 2>/dev/null)"
  else
    log "WARNING: /usr/bin/chromium missing (apt-get install chromium failed): the browser test will fail"
  fi
fi

# 5. redis-server for the cluster tests (each starts its own on a loopback port).
# Unlike Node.js and Chromium this one is required: without it the cluster tests
# cannot run at all, so a failed install fails the set-up with the reason.
if command -v redis-server >/dev/null 2>&1; then
  log "redis-server: $(redis-server --version 2>/dev/null | head -n1)"
else
  log "redis-server not found: installing Debian's redis-server (the cluster tests need it)"
  apt_install redis-server
  if ! command -v redis-server >/dev/null 2>&1; then
    log "ERROR: redis-server still missing after apt-get install redis-server"
    exit 1
  fi
  log "redis-server installed: $(redis-server --version 2>/dev/null | head -n1)"
fi
# 6. Build and bench tools: make (cmake's default generator, for BoringSSL), jq and
# taskset (util-linux) for the bench scripts (benches/cluster.sh, regression.sh,
# peers/compare.sh). Required like redis-server: apt_install stops with the
# command to run when it cannot install them.
tools=()
command -v make >/dev/null 2>&1 || tools+=(make)
command -v jq >/dev/null 2>&1 || tools+=(jq)
command -v taskset >/dev/null 2>&1 || tools+=(util-linux)
if [ "${#tools[@]}" -gt 0 ]; then
  apt_install "${tools[@]}"
fi
for c in make jq taskset; do
  if ! command -v "$c" >/dev/null 2>&1; then
    log "ERROR: $c still missing after apt-get install ${tools[*]}"
    exit 1
  fi
done
log "tools: $(make --version | head -n1), $(jq --version), $(taskset --version 2>/dev/null | head -n1)"
# 7. strace: scripts/check-deploy.sh traces the server to check that
# deploy/seccomp-corecast.json allows every syscall it makes. Optional like
# Chromium: without it that check is skipped and says why.
if command -v strace >/dev/null 2>&1; then
  log "strace: $(strace -V 2>/dev/null | head -n1)"
else
  (apt_install strace) || log "WARNING: could not install strace: the seccomp coverage check will be skipped"
fi
# libseccomp's Python binding (system python3): the same check runs the server under
# the profile as runc would load it. Optional too.
if /usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1; then
  log "python3-seccomp: installed"
else
  (apt_install python3-seccomp) || log "WARNING: could not install python3-seccomp: the seccomp enforcement check will be skipped"
fi
log "done"
