#!/bin/sh
# fleetimg first boot, once per card. Settings in /etc/fleetimg/firstboot.conf.
# Facts behind each step: docs/first-boot.md.
# Marks itself done only when every step succeeded; otherwise it writes the failed steps to
# /etc/fleetimg/firstboot.failed (which `fleetimg nodes probe` reports), exits non-zero so
# the unit shows as failed in the journal, and runs again at the next boot.
set -u
# ROOT: tests run the script against a directory instead of the board's own /.
ROOT=${FLEETIMG_FIRSTBOOT_ROOT:-}
STATE=$ROOT/etc/fleetimg
CONF=$STATE/firstboot.conf
NVPMODEL_CONF=$ROOT/etc/nvpmodel.conf
failed=""
log() { echo "fleetimg-firstboot: $*"; logger -t fleetimg-firstboot "$*" 2>/dev/null || true; }
fail() { failed="$failed $1"; log "FAILED: $1: $2"; }

# The ID of the first power mode in $1 (a list of names, best first) that the board's
# nvpmodel.conf defines; mode numbers differ per module and release, names do not.
power_mode_id() {
    for want in $1; do
        id=$(awk -v want="$want" '
            /^< *POWER_MODEL / {
                id = ""; name = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^ID=/) id = substr($i, 4)
                    if ($i ~ /^NAME=/) name = substr($i, 6)
                }
                if (name == want) { print id; exit }
            }' "$2" 2>/dev/null)
        if [ -n "$id" ]; then echo "$id $want"; return 0; fi
    done
    return 1
}

# Sourced by tests for its functions alone.
[ "${FLEETIMG_FIRSTBOOT_LIB:-}" = 1 ] && return 0

. "$CONF"
# `fleetimg apply --restart` on a running board: its settings now, never a partition change.
if [ "${FLEETIMG_FIRSTBOOT_NOW:-}" = 1 ]; then GROW_APP=0; fi

# Skipping oem-config also skips NVIDIA's resize of APP to the card, so it is done here.
if [ "${GROW_APP:-1}" = 1 ]; then
    part=$(findmnt -n -o SOURCE /)
    disk="/dev/$(lsblk -n -o PKNAME "$part" 2>/dev/null | head -n 1)"
    num=$(cat "/sys/class/block/$(basename "$part")/partition" 2>/dev/null)
    if [ -b "$disk" ] && [ -n "$num" ] && command -v sgdisk >/dev/null; then
        start=$(sgdisk -i "$num" "$disk" | awk '/First sector/ {print $3}')
        guid=$(sgdisk -i "$num" "$disk" | awk '/unique GUID/ {print $4}')
        type=$(sgdisk -i "$num" "$disk" | awk '/Partition GUID code/ {print $4}')
        # Move the backup GPT to the card's real end, then recreate APP from the same start
        # to the end of the card (same GUIDs and name), and grow ext4 online.
        if sgdisk -e "$disk" && \
           sgdisk -d "$num" -n "$num:$start:0" -c "$num:APP" -t "$num:$type" -u "$num:$guid" \
               "$disk" && \
           { partx -u "$disk" 2>/dev/null || partprobe "$disk" 2>/dev/null || true; } && \
           resize2fs "$part"; then
            log "grew $part to the card size"
        else
            fail grow "could not grow $part"
        fi
    else
        log "root is not a partition of a card here ($part): nothing to grow"
    fi
fi

if [ -n "${SWAPFILE:-}" ] && [ ! -e "$ROOT/swapfile" ]; then
    if fallocate -l "$SWAPFILE" "$ROOT/swapfile" && chmod 600 "$ROOT/swapfile" \
        && mkswap "$ROOT/swapfile" >/dev/null \
        && echo "/swapfile none swap sw 0 0" >> "$ROOT/etc/fstab" && swapon "$ROOT/swapfile"; then
        log "swap file of $SWAPFILE enabled"
    else
        fail swap "could not make a swap file of $SWAPFILE"
    fi
fi

if [ -n "${MAX_POWER_NAMES:-}" ] && command -v nvpmodel >/dev/null; then
    if mode=$(power_mode_id "$MAX_POWER_NAMES" "$NVPMODEL_CONF"); then
        if nvpmodel -m "${mode% *}"; then
            log "power mode set to ${mode#* } (ID ${mode% *})"
        else
            fail power "nvpmodel -m ${mode% *} failed"
        fi
    else
        log "no mode named $MAX_POWER_NAMES in $NVPMODEL_CONF: power mode left as it is"
    fi
fi

# Every card leaves without SSH host keys; NVIDIA's nvfb.sh makes them where it runs.
if ! ls "$ROOT"/etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    if ssh-keygen -A ${ROOT:+-f "$ROOT"}; then log "generated SSH host keys"
    else fail hostkeys "ssh-keygen -A"; fi
fi
if [ ! -s "$ROOT/etc/machine-id" ]; then
    systemd-machine-id-setup ${ROOT:+--root="$ROOT"} >/dev/null 2>&1 \
        || fail machine-id "systemd-machine-id-setup"
fi

if [ -n "$failed" ]; then
    echo "failed:$failed" > "$STATE/firstboot.failed"
    exit 1
fi
rm -f "$STATE/firstboot.failed"
touch "$STATE/firstboot.done"
log "done"
