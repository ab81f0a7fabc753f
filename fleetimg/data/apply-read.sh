# fleetimg apply: read what a board holds of its managed state. Runs as root under /bin/sh;
# never changes anything. Arguments: paths (a leading "r:" takes a directory's whole tree).
# Prints key=value facts, then "tar=" and the files as one base64 tar line.
export LC_ALL=C
list=$(mktemp)
trap 'rm -f "$list"' EXIT
for arg in "$@"; do
  case "$arg" in
    r:*) find "${arg#r:}" -xdev 2>/dev/null ;;
    *) if [ -e "$arg" ] || [ -L "$arg" ]; then printf '%s\n' "$arg"; fi ;;
  esac
done | sed 's|^/||' | awk '!seen[$0]++' > "$list"  # once each: a repeat is a hard link in tar
have() { command -v "$1" >/dev/null 2>&1; }
echo "systemd=$(have systemctl && [ -d /run/systemd/system ] && echo yes || echo no)"
if have nmcli && nmcli -t -f RUNNING general 2>/dev/null | grep -q running; then
  echo "networkmanager=yes"
  # The connection active on each device now: where a rollback returns to.
  nmcli -t -f UUID,DEVICE connection show --active 2>/dev/null | sed 's/^/active=/'
else
  echo "networkmanager=no"
fi
for unit in docker k3s k3s-agent ssh sshd nvzramconfig; do
  if have systemctl && systemctl is-active --quiet "$unit" 2>/dev/null; then
    echo "running=$unit"
  fi
done
if have systemctl && systemctl is-active --quiet fleetimg-net-rollback.timer 2>/dev/null; then
  echo "network_try=pending"
fi
echo "hostname=$(hostname)"
# What an earlier apply left for --restart (restart docker, reboot, ...).
if [ -r /var/lib/fleetimg/apply/pending ]; then sed 's/^/pending=/' /var/lib/fleetimg/apply/pending; fi
printf 'tar='
tar -c -f - -C / --no-recursion -T "$list" 2>/dev/null | base64 -w 0
echo
echo "read=done"
