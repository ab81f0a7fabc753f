#!/usr/bin/env bash
# Prepare a Debian/Ubuntu workstation (or CI machine) for fleetimg. Idempotent: safe to rerun.
#   - Debian packages: Docker engine, QEMU arm64 user emulation, debootstrap, e2fsprogs,
#     systemd-nspawn (booting lab cards),
#     gdisk, OpenSSH, zstd/pigz
#   - a running Docker engine (systemd if it is PID 1, else dockerd in the background)
#   - the qemu-aarch64 binfmt handler, enabled with the F flag
#   - a virtualenv in .venv with fleetimg and its dev/test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[34m==>\033[0m %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(docker.io containerd qemu-user-static binfmt-support debootstrap e2fsprogs gdisk
          openssh-client openssh-server iproute2 zstd pigz python3-venv python3-pip
          bmap-tools ca-certificates tar xz-utils unzip util-linux docker-registry
          systemd-container mtools dnsmasq-base)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    if [ "$(ps -o comm= -p 1)" = "systemd" ]; then
        log "starting docker (systemd)"
        $SUDO systemctl start docker
    else
        log "starting dockerd in the background (log: /var/log/fleetimg-dockerd.log)"
        $SUDO sh -c 'nohup dockerd >/var/log/fleetimg-dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/fleetimg-dockerd.log" >&2; exit 1; }
fi

if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    log "mounting binfmt_misc"
    $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    log "enabling qemu-aarch64 binfmt"
    $SUDO update-binfmts --enable qemu-aarch64
fi

stamp=.venv/.fleetimg-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing fleetimg into .venv"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
    # setuptools prints an "Editable installation" notice (InformationOnly, not a packaging
    # problem) for every editable install whose packages map directories (overlays/ ->
    # fleetimg.overlays); only a src/ layout avoids it. Filtered by its message, nothing else.
    PYTHONWARNINGS="ignore:Editable installation" \
        .venv/bin/pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
    .venv/bin/python -c "import fleetimg, docker, click, testcontainers" 
    echo "$want" > "$stamp"
fi
log "host ready"
