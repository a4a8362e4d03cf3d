#!/usr/bin/env bash
# The README's run command: build corecast (release) and serve the default
# config.yaml. Extra arguments go to `corecast serve` (e.g. --listen 0.0.0.0:8080).
# Does its own set-up on a fresh machine: checks for cargo and a C compiler.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "serve.sh: installing missing build tools: ${need_apt[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "serve.sh: run as root or install: ${need_apt[*]}" >&2
    exit 1
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "serve.sh: cargo is required (install a Rust toolchain with rustup)" >&2
  exit 1
fi

cargo build --release -p corecast --bin corecast
exec "$ROOT/target/release/corecast" serve --config "$ROOT/config.yaml" "$@"
