#!/bin/sh
# Written by fleetimg: a NetworkManager dispatcher script (NetworkManager-dispatcher(8)).
# This DHCP node's own name resolves to the address its lease gave, not to 127.0.1.1:
# Gloo, MPI and torch.distributed bind and advertise what their hostname resolves to.
case "$2" in up|dhcp4-change) ;; *) exit 0 ;; esac
address=${DHCP4_IP_ADDRESS:-}
[ -n "$address" ] || exit 0
mark='# fleetimg: this node'"'"'s leased address'
name=$(cat /etc/hostname) || exit 0
tmp=$(mktemp /etc/.fleetimg-hosts.XXXXXX) || exit 0
awk -v a="$address" -v n="$name" -v m="$mark" \
    'index($0, m) { print a "\t" n "\t" m; next } { print }' /etc/hosts > "$tmp" &&
    chmod 644 "$tmp" && mv -f "$tmp" /etc/hosts || rm -f "$tmp"
