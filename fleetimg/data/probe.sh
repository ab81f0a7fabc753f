# fleetimg node probe: read-only facts, one key=value per line. Runs under /bin/sh on the
# node with the inventory name as $1. Never changes anything.
export LC_ALL=C
expected="$1"
echo "arch=$(uname -m)"
echo "hostname=$(hostname)"
if [ -r /etc/nv_tegra_release ]; then
  echo "tegra=$(head -n 1 /etc/nv_tegra_release)"
fi
if [ -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  echo "arm64_emulation=yes"
fi
# The module, from the device tree (NUL-separated; the lab keeps a copy in /etc/fleetimg-lab).
for dt in /proc/device-tree/compatible /etc/fleetimg-lab/device-tree-compatible; do
  if [ -r "$dt" ]; then echo "compatible=$(tr '\000' ' ' < "$dt")"; break; fi
done
# The exact point release (R36.4.3 boards upgrade to 36.4.7 by apt) and the firmware.
core=$(dpkg-query -W -f='${Version}' nvidia-l4t-core 2>/dev/null) && echo "l4t_package=$core"
if command -v nvbootctrl >/dev/null 2>&1; then
  fw=$( (nvbootctrl dump-slots-info 2>/dev/null || sudo -n nvbootctrl dump-slots-info 2>/dev/null) \
        | awk -F': *' '/Current version/ { print $2; exit }')
  echo "firmware=$fw"
elif [ -r /etc/fleetimg-lab/firmware ]; then
  echo "firmware=$(cat /etc/fleetimg-lab/firmware)"
fi
echo "interfaces=$(ip -o link show 2>/dev/null | awk -F': ' '$2 != "lo" { sub(/@.*/, "", $2); printf "%s,", $2 }')"
tools=""
for t in zstd pigz gzip; do command -v "$t" >/dev/null 2>&1 && tools="$tools$t,"; done
echo "tools=$tools"
if awk -v h="$expected" '$1 !~ /^#/ { for (i = 2; i <= NF; i++) if ($i == h) f = 1 } END { exit !f }' /etc/hosts; then
  echo "hosts_has_name=yes"
else
  echo "hosts_has_name=no"
fi
# What the node's own name resolves to: Gloo/MPI bind it, so it must be the fleet address.
echo "self_address=$(getent hosts "$expected" 2>/dev/null | awk 'NR == 1 { print $1 }')"
# fleetimg's first-boot unit on cards it wrote (docs/first-boot.md).
if [ -e /etc/fleetimg/firstboot.done ]; then echo "firstboot=done"
elif [ -e /etc/fleetimg/firstboot.failed ]; then echo "firstboot=$(head -n 1 /etc/fleetimg/firstboot.failed)"
elif [ -e /etc/fleetimg/firstboot.conf ]; then echo "firstboot=pending"
fi
# Restarts or a reboot `fleetimg apply` left for --restart.
if [ -d /var/lib/fleetimg/apply ]; then
  pending=$(sudo -n cat /var/lib/fleetimg/apply/pending 2>/dev/null | paste -sd, -)
  [ -n "$pending" ] && echo "apply_pending=$pending"
fi
if command -v docker >/dev/null 2>&1; then
  D=""
  if docker version >/dev/null 2>&1; then D="docker"
  elif sudo -n docker version >/dev/null 2>&1; then D="sudo -n docker"; echo "docker_sudo=yes"
  fi
  if [ -n "$D" ]; then
    $D info --format 'docker_version={{.ServerVersion}}
docker_runtime={{.DefaultRuntime}}
docker_runtimes={{range $k, $v := .Runtimes}}{{$k}},{{end}}
docker_root={{.DockerRootDir}}' 2>/dev/null
    root=$($D info --format '{{.DockerRootDir}}' 2>/dev/null)
  else
    echo "docker_error=docker is installed but the daemon does not answer (or needs sudo with a password)"
  fi
fi
[ -n "$root" ] || root=/var/lib/docker
[ -d "$root" ] || root=/
df -Pk "$root" 2>/dev/null | awk 'NR == 2 { print "free_kb=" $4 }'
if command -v k3s >/dev/null 2>&1; then
  echo "k3s=$(k3s --version 2>/dev/null | head -n 1)"
fi
echo "probe=done"
