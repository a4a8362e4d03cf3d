#!/usr/bin/env bash
# Checks the deployment files (deploy/: Dockerfile, seccomp profile, compose file,
# systemd unit) against the real binary: scripts/check-deploy.py says what each
# check does. A stage of scripts/test.sh; run alone after
# `cargo build --release -p corecast` (CORECAST_BIN overrides the binary).
# Ends with `deploy: N passed, N failed, N skipped`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# PyYAML reads the compose file: the test venv has it (scripts/setup-test-deps.sh).
PY=""
for cand in "$ROOT/tests/python/.venv/bin/python" python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import yaml' >/dev/null 2>&1; then
    PY="$cand"
    break
  fi
done
if [ -z "$PY" ]; then
  echo "check-deploy: no Python with PyYAML (run scripts/setup-test-deps.sh)" >&2
  exit 1
fi
exec "$PY" "$ROOT/scripts/check-deploy.py" "$@"
