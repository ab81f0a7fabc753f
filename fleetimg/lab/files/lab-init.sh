#!/bin/sh
# Entry point of a fleetimg lab node: a container that plays a Jetson board.
# /fleetimg (read-only bind mount) holds authorized_keys and this node's SSH host key.
set -eu
if [ -n "${FLEETIMG_TEGRA_RELEASE:-}" ]; then
    printf '%s\n' "$FLEETIMG_TEGRA_RELEASE" > /etc/nv_tegra_release
fi
# Another board than a Nano (an Orin): what probe reads from /proc/device-tree/compatible
# (NUL-separated) and nvbootctrl on a board, and the Ethernet port's name.
mkdir -p /etc/fleetimg-lab
if [ -n "${FLEETIMG_DT_COMPATIBLE:-}" ]; then
    printf '%s\0' $FLEETIMG_DT_COMPATIBLE > /etc/fleetimg-lab/device-tree-compatible
fi
if [ -n "${FLEETIMG_FIRMWARE:-}" ]; then
    printf '%s\n' "$FLEETIMG_FIRMWARE" > /etc/fleetimg-lab/firmware
fi
if [ -n "${FLEETIMG_ETHERNET:-}" ] && ip link show eth0 >/dev/null 2>&1; then
    gw=$(ip route show default | awk '{ print $3; exit }')
    ip link set eth0 down && ip link set eth0 name "$FLEETIMG_ETHERNET" && \
        ip link set "$FLEETIMG_ETHERNET" up
    [ -n "$gw" ] && ip route replace default via "$gw" dev "$FLEETIMG_ETHERNET"
fi
install -d -m 700 -o jetson -g jetson /home/jetson/.ssh
install -m 600 -o jetson -g jetson /fleetimg/authorized_keys /home/jetson/.ssh/authorized_keys
# The fleet-internal key (as `fleetimg sdcard` writes it): node-to-node SSH for relays.
if [ -f /fleetimg/id_ed25519 ]; then
    install -m 600 -o jetson -g jetson /fleetimg/id_ed25519 /home/jetson/.ssh/id_ed25519
fi
install -m 600 /fleetimg/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
install -m 644 /fleetimg/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /run/sshd
# binfmt registrations are kernel-wide; mounting the view lets probes see arm64 emulation.
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
# containerd on its standard socket, as K3s nodes have it (`ctr -n k8s.io` finds it), and
# the node's own Docker engine on top. /var/lib/docker is a volume, so overlay2 works nested.
containerd >/var/log/containerd.log 2>&1 &
for _ in $(seq 1 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
dockerd --containerd=/run/containerd/containerd.sock \
    --storage-driver="${FLEETIMG_STORAGE_DRIVER:-overlay2}" >/var/log/dockerd.log 2>&1 &
exec /usr/sbin/sshd -D -e -o HostKey=/etc/ssh/ssh_host_ed25519_key
