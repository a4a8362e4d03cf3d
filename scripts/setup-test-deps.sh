#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, idempotently and
# without asking anything (safe under CI=true with no stdin):
#   - a Python 3 with the venv module (Debian's python3-venv only if it is missing),
#   - tests/python/.venv with pinned websockets, kosoku (Autobahn cases) and pytest.
# Re-running it is cheap: each step checks first and prints what it installs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/tests/python/.venv"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

# Pinned Python test dependencies (bump deliberately; the marker file below
# makes the venv reinstall when this list changes).
PY_PKGS=(websockets==17.4 kosoku==0.1.0 pytest==9.2.0)

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
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi
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
  "$VENV/bin/python" -c 'import websockets, kosoku, pytest' >/dev/null 2>&1; then
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
    f"{n}=={md.version(n)}" for n in ("websockets", "kosoku", "pytest")))
PY
log "done"
