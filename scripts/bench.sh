#!/usr/bin/env bash
# Run one benchmark from a fresh machine: sets the host up (as the test command does), adds
# the plotting extra, then runs benchmarks/NAME.py with the remaining arguments.
#   bash scripts/bench.sh push_fanout [--sizes 1,2,4,8] [--rate-mbit 50]
#   bash scripts/bench.sh push_lab | build_cache | sdcard_write
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/bench.sh NAME [ARGS...] (NAME: push_fanout, push_lab, build_cache, sdcard_write)}
shift
[ -f "benchmarks/$name.py" ] || { echo "error: no benchmarks/$name.py" >&2; exit 2; }
bash scripts/setup-host.sh
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/pip install -q -e '.[dev,bench]'
exec .venv/bin/python "benchmarks/$name.py" "$@"
