#!/usr/bin/env bash
# The whole test suite: set up this host, then lint, type-check and run every test
# (unit and integration: real Docker engine, real lab nodes with sshd).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
export PATH="$PWD/.venv/bin:$PATH"
export TESTCONTAINERS_RYUK_DISABLED=true

# A cold run peaks at about 30 GB on the disk that holds Docker's data and /tmp (images
# and BuildKit cache ~25 GB, one card test's images ~8 GB). Say so up front: running out
# midway fails dozens of unrelated tests with ENOSPC.
need_gb=35
for dir in "$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)" "${TMPDIR:-/tmp}"; do
    free_gb=$(df -BG --output=avail "$dir" 2>/dev/null | tail -1 | tr -dc 0-9 || true)
    if [ -n "$free_gb" ] && [ "$free_gb" -lt "$need_gb" ]; then
        echo "warning: ${free_gb} GB free under $dir; a cold run needs about ${need_gb} GB" \
            "(hint: docker system prune -af; docker builder prune -af)" >&2
    fi
done

echo "--- ruff"; ruff check fleetimg tests benchmarks
echo "--- mypy"; mypy
echo "--- pytest"
set +e
pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi
exit "$rc"
