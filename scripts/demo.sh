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

step "done: the lab stays up for more commands (fleetimg lab down removes it)"
echo "export FLEETIMG_INVENTORY=$FLEETIMG_INVENTORY"
