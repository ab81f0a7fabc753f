#!/bin/sh
# fleetimg first boot, once per card. Settings in /etc/fleetimg/firstboot.conf.
# Skipping oem-config also skips NVIDIA's resize of APP to the card, so it is done here.
set -u
. /etc/fleetimg/firstboot.conf
log() { echo "fleetimg-firstboot: $*"; logger -t fleetimg-firstboot "$*" 2>/dev/null || true; }

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
        sgdisk -e "$disk" && \
        sgdisk -d "$num" -n "$num:$start:0" -c "$num:APP" -t "$num:$type" -u "$num:$guid" "$disk" && \
        (partx -u "$disk" 2>/dev/null || partprobe "$disk" 2>/dev/null || true) && \
        resize2fs "$part" && log "grew $part to the card size" || log "could not grow $part"
    fi
fi

if [ -n "${SWAPFILE:-}" ] && [ ! -e /swapfile ]; then
    fallocate -l "$SWAPFILE" /swapfile && chmod 600 /swapfile && mkswap /swapfile >/dev/null \
        && echo "/swapfile none swap sw 0 0" >> /etc/fstab && swapon /swapfile \
        && log "swap file of $SWAPFILE enabled"
fi

if [ "${MAX_POWER:-0}" = 1 ] && command -v nvpmodel >/dev/null; then
    nvpmodel -m 0 && log "power mode set to 0 (MAXN)"
fi

# Cards from --allow-cloned had the source board's host keys removed.
if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    ssh-keygen -A && log "generated SSH host keys"
fi
[ -s /etc/machine-id ] || systemd-machine-id-setup

touch /etc/fleetimg/firstboot.done
