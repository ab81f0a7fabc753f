# fleetimg apply: the board writer. Runs as root under /bin/sh; fleetimg appends the
# payload (the new files as a base64 tar) and the steps, each argument shell-quoted.
set -eu
umask 022
export LC_ALL=C
STATE=/var/lib/fleetimg/apply
mkdir -p "$STATE"
chmod 700 "$STATE"
stage=$(mktemp -d "$STATE/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
log() { echo "fleetimg-apply: $*"; logger -t fleetimg-apply "$*" 2>/dev/null || true; }

# The new files, with their modes and owners, under $stage.
unpack() { base64 -d | tar -x -p --same-owner -f - -C "$stage"; }

# The staged file replaces PATH by a rename in PATH's directory, so no reader ever sees half
# of it. A mount point (Docker bind-mounts /etc/hosts into containers) cannot be renamed
# over: it is rewritten in place.
put_file() {
  p=$1
  mkdir -p "$(dirname "$p")"
  if [ -d "$p" ] && [ ! -L "$p" ]; then
    echo "fleetimg-apply: $p is a directory, not replaced" >&2; return 1
  fi
  cp -p "$stage$p" "$p.fleetimg-new"
  if ! mv -f "$p.fleetimg-new" "$p" 2>/dev/null; then
    rm -f "$p.fleetimg-new"
    cat "$stage$p" > "$p"
    chmod --reference="$stage$p" "$p"
    chown --reference="$stage$p" "$p"
  fi
}

put_dir() {  # MODE UID GID PATH
  install -d -m "$1" -o "$2" -g "$3" "$4"
}

put_link() {  # TARGET PATH
  mkdir -p "$(dirname "$2")"
  ln -sfn "$1" "$2.fleetimg-new"
  mv -Tf "$2.fleetimg-new" "$2"
}

drop() { rm -f "$1"; }

# Network files go in with a deadline (what `netplan try` does): the old ones are kept, a
# timer on the board puts them back and reactivates the old connection unless fleetimg
# confirms from the new address in time. Arguments: SECONDS DEVICE NEW_UUID OLD_UUID PATHS...
net_try() {
  seconds=$1; device=$2; new=$3; old=$4; shift 4
  if systemctl is-active --quiet fleetimg-net-rollback.timer 2>/dev/null; then
    echo "fleetimg-apply: a network change is already being tried here" >&2; return 1
  fi
  rm -rf "$STATE/backup"
  mkdir -p "$STATE/backup/root"
  : > "$STATE/backup/absent"
  : > "$STATE/backup/present"
  for p in "$@"; do
    if [ -e "$p" ]; then
      mkdir -p "$STATE/backup/root$(dirname "$p")"
      cp -a "$p" "$STATE/backup/root$p"
      printf '%s\n' "$p" >> "$STATE/backup/present"
    else
      printf '%s\n' "$p" >> "$STATE/backup/absent"
    fi
  done
  cat > "$STATE/rollback.sh" <<EOF
#!/bin/sh
# Written by fleetimg apply: undo the network change it could not confirm.
while read -r p; do
  cp -a "$STATE/backup/root\$p" "\$p.fleetimg-old" && mv -f "\$p.fleetimg-old" "\$p"
done < "$STATE/backup/present"
while read -r p; do rm -f "\$p"; done < "$STATE/backup/absent"
nmcli connection reload
hostname "\$(cat /etc/hostname)" 2>/dev/null || true
if [ -n "$old" ]; then nmcli connection up uuid "$old" || nmcli device connect "$device"
else nmcli device connect "$device"; fi
echo "rolled back \$(date -u +%FT%TZ)" > "$STATE/last-network-try"
logger -t fleetimg-apply "network change not confirmed in ${seconds} s: rolled back"
rm -rf "$STATE/backup"
EOF
  systemctl reset-failed fleetimg-net-rollback.service fleetimg-net-rollback.timer \
    2>/dev/null || true
  systemd-run --quiet --unit=fleetimg-net-rollback --collect --on-active="${seconds}s" \
    --timer-property=AccuracySec=1s /bin/sh "$STATE/rollback.sh"
  for p in "$@"; do
    if [ -e "$stage$p" ]; then put_file "$p"; fi
  done
  hostname "$(cat /etc/hostname)" 2>/dev/null || true
  nmcli connection reload
  # In its own unit: activating drops this SSH session when the address moves.
  systemd-run --quiet --unit="fleetimg-net-up-$(date +%s%N)" --collect \
    nmcli connection up uuid "$new"
  echo "trying $(date -u +%FT%TZ)" > "$STATE/last-network-try"
  log "network change activated; rolled back in ${seconds} s unless confirmed"
}

net_confirm() {
  systemctl stop fleetimg-net-rollback.timer 2>/dev/null || true
  rm -rf "$STATE/backup"
  echo "confirmed $(date -u +%FT%TZ)" > "$STATE/last-network-try"
  log "network change confirmed"
}

# A cloned board's own identity: a new machine-id and new SSH host keys.
reset_identity() {
  umount /etc/machine-id 2>/dev/null || true
  # Random, not systemd-machine-id-setup: that one takes the old ID back from
  # /var/lib/dbus/machine-id, or in a container from the manager's UUID.
  tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id.fleetimg-new
  chmod 444 /etc/machine-id.fleetimg-new
  mv -f /etc/machine-id.fleetimg-new /etc/machine-id
  if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    cp /etc/machine-id /var/lib/dbus/machine-id
  fi
  rm -f /etc/ssh/ssh_host_*
  ssh-keygen -A >/dev/null
  log "identity reset: new machine-id and SSH host keys"
}

restart_ssh() {
  # sshd keeps the sessions it has (this one included) across a restart.
  if [ -d /run/systemd/system ]; then
    systemctl restart ssh 2>/dev/null || systemctl restart sshd
  elif [ -r /run/sshd.pid ]; then
    kill -HUP "$(cat /run/sshd.pid)"
  fi
}

restart_unit() {  # the first of the given units that runs
  for u in "$@"; do
    if systemctl is-active --quiet "$u" 2>/dev/null; then systemctl restart "$u"; return; fi
  done
}

# Effects left for `apply --restart`, one per line; the next apply reads them back.
note_pending() {
  for e in "$@"; do
    grep -qxF "$e" "$STATE/pending" 2>/dev/null || printf '%s\n' "$e" >> "$STATE/pending"
  done
}

clear_pending() { rm -f "$STATE/pending"; }

settings_now() {
  FLEETIMG_FIRSTBOOT_NOW=1 /usr/local/sbin/fleetimg-firstboot
}
