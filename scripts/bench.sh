#!/usr/bin/env bash
# Run one benchmark from a fresh machine: sets the host up (as the test command does), adds
# the plotting extra, then runs benchmarks/NAME.py with the remaining arguments.
#   bash scripts/bench.sh push_fanout [--sizes 1,2,4,8] [--rate-mbit 50]
#   bash scripts/bench.sh push_lab | push_delta | push_pipeline | build_cache | sdcard_write
#   bash scripts/bench.sh sdcard_card_speed [--rates 20,40,90]
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/bench.sh NAME [ARGS...] (NAME: a script in benchmarks/)}
shift
[ -f "benchmarks/$name.py" ] || { echo "error: no benchmarks/$name.py" >&2; exit 2; }
bash scripts/setup-host.sh
.venv/bin/python -c 'import matplotlib, mfusepy' 2>/dev/null || .venv/bin/pip install -q -e '.[dev,bench]'
# sdcard_card_speed's card is a FUSE file: libfuse3 (mfusepy loads it) comes with fuse3.
command -v fusermount3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q fuse3 >/dev/null
exec .venv/bin/python "benchmarks/$name.py" "$@"
