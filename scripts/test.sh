#!/usr/bin/env bash
# The whole test suite: set up this host, then lint, type-check and run every test
# (unit and integration: real Docker engine, real lab nodes with sshd).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
export PATH="$PWD/.venv/bin:$PATH"
export TESTCONTAINERS_RYUK_DISABLED=true

echo "--- ruff"; ruff check fleetimg tests benchmarks
echo "--- mypy"; mypy
echo "--- pytest"
set +e
pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi
exit "$rc"
