#!/usr/bin/env bash
# The main job, end to end, on the local lab fleet: set up this host, bring up a 3-node lab
# fleet of Jetson-like containers, check the workstation, probe every node.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
export PATH="$PWD/.venv/bin:$PATH"
step() { printf '\n\033[1;34m### %s\033[0m\n' "$*"; }

step "fleetimg lab up --nodes 3"
fleetimg lab up --nodes 3
export FLEETIMG_INVENTORY="${FLEETIMG_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/fleetimg}/lab/fleet.toml"

step "fleetimg doctor"
fleetimg doctor

step "fleetimg nodes"
fleetimg nodes

step "fleetimg nodes probe --to all-nodes"
fleetimg nodes probe --to all-nodes

step "fleetimg push: an arm64 app image to every lab node (only missing layers, zstd, verified)"
fleetimg lab app demo/app:latest --line "print('hello v1')"
fleetimg push demo/app:latest --to all-nodes --quiet

step "fleetimg push again after a one-line app change: only the new layer travels"
fleetimg lab app demo/app:latest --line "print('hello v2: one line changed')"
fleetimg push demo/app:latest --to all-nodes --quiet

step "fleetimg sdcard: a per-node SD card image for node2, from a Jetson-like test image"
work="${FLEETIMG_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/fleetimg}/demo"
mkdir -p "$work"
[ -f "$work/jetson-r32.7.1.img" ] || fleetimg lab sdimage "$work/jetson-r32.7.1.img"
fleetimg sdcard --node node2 --image "$work/jetson-r32.7.1.img" "$work/node2.img"
echo "--- read back from $work/node2.img without mounting:"
for f in /etc/hostname /etc/NetworkManager/system-connections/fleetimg-eth0.nmconnection; do
    echo "# $f"
    debugfs -R "cat $f" "$work/node2.img?offset=$((28672 * 512))" 2>/dev/null
done

step "done: the lab stays up for more commands (fleetimg lab down removes it)"
echo "export FLEETIMG_INVENTORY=$FLEETIMG_INVENTORY"
