#!/usr/bin/env bash
# The main job, end to end, on the local lab fleet: set up this host, bring up a lab fleet of
# three Jetson-like containers and one board booted from a card fleetimg wrote, check the
# workstation, probe every node, build, push (twice), run batch inference across the boards,
# prepare an SD card image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
export PATH="$PWD/.venv/bin:$PATH"
step() { printf '\n\033[1;34m### %s\033[0m\n' "$*"; }

step "fleetimg lab up --nodes 3 --card-nodes 1: three container nodes, and node4 that boots from a card"
fleetimg lab up --nodes 3 --card-nodes 1
export FLEETIMG_INVENTORY="${FLEETIMG_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/fleetimg}/lab/fleet.toml"
work="${FLEETIMG_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/fleetimg}/demo"
mkdir -p "$work"

step "node4's card: fleetimg sdcard writes it from a bootable JetPack-shaped image, fleetimg lab boot boots it"
# First time: debootstrap of the card's Debian root (~2 min), kept for later runs.
[ -f "$work/bootable-r32.7.1.img" ] || fleetimg lab sdimage --bootable "$work/bootable-r32.7.1.img"
fleetimg lab boot --stop node4 >/dev/null
fleetimg sdcard --node node4 --image "$work/bootable-r32.7.1.img" "$work/node4.img" --force
fleetimg lab boot "$work/node4.img"

step "fleetimg doctor"
fleetimg doctor

step "fleetimg nodes"
fleetimg nodes

step "fleetimg nodes probe --to all-nodes"
fleetimg nodes probe --to all-nodes

step "fleetimg apply: running boards brought to the inventory (hostname, /etc/hosts, users, keys); a second run changes nothing"
fleetimg apply --only network,users --yes
fleetimg apply --only network,users --dry-run | tail -1

step "fleetimg targets: NGC base per target and L4T"
fleetimg targets | tail -20

step "fleetimg build pytorch for the lab's L4T, on the offline stand-in base (first time: minutes)"
# NGC is unreachable here: `lab base` builds arm64 stand-ins with debootstrap and PyPI.
# The CA bundle is handed to pip as a build secret (TLS-intercepting proxies need it).
fleetimg lab base --ca-bundle /etc/ssl/certs/ca-certificates.crt
rm -rf "$work/dockerfiles" && cp -r dockerfiles "$work/dockerfiles"
export FLEETIMG_DOCKERFILES="$work/dockerfiles"   # a copy, so the demo can edit the app
fleetimg build pytorch --to all-nodes --standin --tag demo/pytorch:latest 2>/dev/null | tail -1
docker images --filter label=io.fleetimg.target=pytorch \
    --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}'
docker image inspect demo/pytorch:latest --format '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{println}}{{end}}' | grep -E 'io.fleetimg|opencontainers.image.(created|revision)'

step "fleetimg push: one copy leaves this machine, nodes relay it node to node (--fanout auto = chain), each verified; node4 loads it into the Docker engine on its card"
fleetimg push demo/pytorch:latest --to all-nodes --quiet

step "one-line app change, rebuild (cached), push again: only the new layer travels"
echo "# demo: one-line change" >> "$FLEETIMG_DOCKERFILES/pytorch/app/classify.py"
fleetimg build pytorch --to all-nodes --standin --tag demo/pytorch:latest --no-smoke 2>/dev/null | tail -1
fleetimg push demo/pytorch:latest --to all-nodes --quiet
unset FLEETIMG_DOCKERFILES

step "fleetimg run pytorch: batch inference as an indexed job, one slice per board (node4 on its card too), a throughput table and one results file (ResNet-50 at 64 px: arm64 runs under QEMU here)"
fleetimg run pytorch --image demo/pytorch:latest --to all-nodes --synthetic 32 \
    -o "$work/pytorch-results.jsonl" -- --size 64 --batch-size 4 2>&1 | grep -v MIDR_EL1
echo "--- $(wc -l < "$work/pytorch-results.jsonl") results, one per image; the first:"
head -1 "$work/pytorch-results.jsonl"

step "fleetimg sdcard: a per-node SD card image for node2, from a Jetson-like test image"
[ -f "$work/jetson-r32.7.1.img" ] || fleetimg lab sdimage "$work/jetson-r32.7.1.img"
fleetimg sdcard --node node2 --image "$work/jetson-r32.7.1.img" "$work/node2.img" --force
echo "--- read back from $work/node2.img without mounting:"
for f in /etc/hostname /etc/NetworkManager/system-connections/fleetimg-wired.nmconnection; do
    echo "# $f"
    debugfs -R "cat $f" "$work/node2.img?offset=$((28672 * 512))" 2>/dev/null
done

step "done: the lab stays up for more commands (fleetimg lab down removes it)"
echo "export FLEETIMG_INVENTORY=$FLEETIMG_INVENTORY"
