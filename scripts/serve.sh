#!/usr/bin/env bash
# The README's run command: build corecast (release) and serve the default
# config.yaml. Extra arguments go to `corecast serve` (e.g. --listen 0.0.0.0:8080).
# Does its own set-up on a fresh machine (scripts/build-deps.sh: C compiler, cmake,
# clang/libclang for quiche's BoringSSL; cargo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash "$ROOT/scripts/build-deps.sh"

cargo build --release -p corecast --bin corecast
exec "$ROOT/target/release/corecast" serve --config "$ROOT/config.yaml" "$@"
