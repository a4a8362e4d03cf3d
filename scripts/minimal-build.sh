#!/usr/bin/env bash
# The engine built without its optional parts (WebSocket and SSE only): what an
# embedder gets with `default-features = false`. Fails if that build still pulls in
# quiche (BoringSSL), redis, jsonwebtoken, rustls or tokio, or if it does not lint
# or pass its tests (the library's unit tests and engine/tests/embed_bare.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deps=$(cargo tree -p corecast --no-default-features -e normal --prefix none | awk '{print $1}' | sort -u)
for heavy in quiche redis jsonwebtoken rustls tokio; do
  if grep -qx "$heavy" <<<"$deps"; then
    echo "minimal build: corecast --no-default-features still depends on $heavy" >&2
    exit 1
  fi
done
echo "minimal build: no quiche, redis, jsonwebtoken, rustls or tokio"
cargo clippy -p corecast --no-default-features --lib --tests -- -D warnings
cargo test -p corecast --no-default-features --lib --test embed_bare -- --test-threads "${TEST_THREADS:-4}"
