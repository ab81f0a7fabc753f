"""JetPack's first-boot machinery, as stand-ins on the lab's bootable Debian card.

Each piece does what NVIDIA's does, as far as a card can tell (docs/first-boot.md), so a
card written by `fleetimg sdcard` meets the same first boot in the lab as on a board:

- `/etc/nv/nvfirstboot` with nvfb-early (creates `/etc/nvpmodel.conf` when missing) and
  nvfb (creates missing SSH host keys), which remove the marker;
- `nv-oem-config.target` as default.target, whose wizard never finishes: a card that
  reaches it is a board waiting for a monitor. It leaves `/var/log/nv-oem-config-reached`;
- `nvzramconfig.service` in /etc/systemd/system, enabled through multi-user.target.wants;
- R32's nv-late-init.sh reaction to `/etc/nv/nvautoconfig` (grow, swap file, QSPI update),
  recorded in `/var/log/nv-late-init.log` instead of done;
- `/etc/skel/Desktop/` with launchers, an `nvpmodel` that records the mode it is given, and
  the nvidia Docker runtime entry JetPack's daemon.json has (runc underneath).
"""

from __future__ import annotations

from dataclasses import dataclass

# Minimal: the stand-ins record instead of changing hardware.
NVFB_EARLY = """#!/bin/sh
# Stand-in for NVIDIA's nvfb-early.sh: the power model for this module, once (the card
# holds one module's file: t210 on an R32 card, an Orin Nano's on an R36 card).
[ -e /etc/nvpmodel.conf ] || cp "$(ls /etc/nvpmodel/nvpmodel_*.conf | head -n 1)" /etc/nvpmodel.conf
"""

NVFB = """#!/bin/sh
# Stand-in for NVIDIA's nvfb.sh: only *missing* SSH host keys, then the marker goes.
ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A
echo "nvfb ran" >> /var/log/nvfb.log
rm -f /etc/nv/nvfirstboot
"""

NV_LATE_INIT = """#!/bin/sh
# Stand-in for R32's nv-late-init.sh: with /etc/nv/nvautoconfig it would grow APP, add a
# swap file and update the QSPI bootloader. Recorded, not done.
if [ -e /etc/nv/nvautoconfig ]; then
    echo "nvautoconfig: nvresizefs nvswap nvqspi-update" >> /var/log/nv-late-init.log
    rm -f /etc/nv/nvautoconfig
fi
"""

OEM_WIZARD = """#!/bin/sh
# Stand-in for the oem-config wizard: waits forever for a monitor and keyboard.
echo "oem-config reached at $(date)" > /var/log/nv-oem-config-reached
exec sleep infinity
"""

NVPMODEL = """#!/bin/sh
# Stand-in for nvpmodel: records the mode it is set to.
mkdir -p /var/lib/nvpmodel
case "$1" in
    -m) echo "$2" > /var/lib/nvpmodel/status ;;
    -q) cat /var/lib/nvpmodel/status 2>/dev/null || echo 0 ;;
esac
"""

NVPMODEL_T210 = """< PM_CONFIG DEFAULT=0 >
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=5W >
CPU_ONLINE CORE_0 1
"""

# An Orin Nano 8 GB with the Super device tree (nvpmodel_p3767_0003_super.conf): the IDs
# differ from the Nano's, the names are what the card overlay chooses by.
NVPMODEL_ORIN_NANO = """< PM_CONFIG DEFAULT=2 >
< POWER_MODEL ID=0 NAME=15W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=25W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=2 NAME=MAXN_SUPER >
CPU_ONLINE CORE_0 1
"""

NVIDIA_RUNTIME = """#!/bin/sh
# Stand-in for nvidia-container-runtime: no GPU in the lab, runc underneath.
exec runc "$@"
"""

DAEMON_JSON = """{
    "runtimes": {
        "nvidia": {
            "path": "nvidia-container-runtime",
            "runtimeArgs": []
        }
    }
}
"""

BINFMT = """#!/bin/sh
# Lab only: a card node on x86 runs arm64 images through the host's QEMU handler, as the
# container lab nodes do (a real Jetson is arm64 itself). binfmt_misc is one for the whole
# kernel here, and something in the card's shutdown flushed the host's handlers when it was
# mounted writable: read-only shows them and lets nothing change them.
mountpoint -q /proc/sys/fs/binfmt_misc || \
    mount -t binfmt_misc -o ro binfmt_misc /proc/sys/fs/binfmt_misc
"""


def unit(description: str, body: str, *, install: str = "multi-user.target",
         condition: str = "") -> str:
    cond = f"ConditionPathExists={condition}\n" if condition else ""
    return (f"[Unit]\nDescription={description}\n{cond}{body}\n"
            f"[Install]\nWantedBy={install}\n")


@dataclass(frozen=True)
class StandinFile:
    path: str
    content: str
    mode: int = 0o644


FILES: tuple[StandinFile, ...] = (
    StandinFile("/etc/nv/nvfirstboot", ""),
    StandinFile("/etc/systemd/nvfb-early.sh", NVFB_EARLY, 0o755),
    StandinFile("/etc/systemd/nvfb.sh", NVFB, 0o755),
    StandinFile("/etc/systemd/nv-late-init.sh", NV_LATE_INIT, 0o755),
    StandinFile("/usr/local/lib/nv-oem-config-wizard", OEM_WIZARD, 0o755),
    StandinFile("/usr/sbin/nvpmodel", NVPMODEL, 0o755),
    StandinFile("/etc/nvpmodel/nvpmodel_t210.conf", NVPMODEL_T210),
    StandinFile("/usr/bin/nvidia-container-runtime", NVIDIA_RUNTIME, 0o755),
    StandinFile("/etc/docker/daemon.json", DAEMON_JSON),
    StandinFile("/usr/local/lib/fleetimg-lab-binfmt", BINFMT, 0o755),
    StandinFile("/etc/skel/Desktop/nv_devzone.desktop",
                "[Desktop Entry]\nName=NVIDIA Developer Zone\nType=Link\n"),
    StandinFile("/lib/systemd/system/nvfb-early.service", unit(
        "NVIDIA first boot (early) stand-in",
        "Before=nvfb.service ssh.service\n[Service]\nType=oneshot\n"
        "ExecStart=/etc/systemd/nvfb-early.sh\n", condition="/etc/nv/nvfirstboot")),
    StandinFile("/lib/systemd/system/nvfb.service", unit(
        "NVIDIA first boot stand-in",
        "After=nvfb-early.service\nBefore=ssh.service\n[Service]\nType=oneshot\n"
        "ExecStart=/etc/systemd/nvfb.sh\n", condition="/etc/nv/nvfirstboot")),
    StandinFile("/lib/systemd/system/nv-late-init.service", unit(
        "NVIDIA late init stand-in",
        "After=multi-user.target\n[Service]\nType=oneshot\n"
        "ExecStart=/etc/systemd/nv-late-init.sh\n")),
    StandinFile("/etc/systemd/system/nvzramconfig.service", unit(
        "ZRAM configuration (stand-in)",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n")),
    StandinFile("/lib/systemd/system/nv-oem-config.service",
                "[Unit]\nDescription=oem-config wizard stand-in\nAfter=basic.target\n"
                "[Service]\nExecStart=/usr/local/lib/nv-oem-config-wizard\n"),
    StandinFile("/lib/systemd/system/nv-oem-config.target",
                "[Unit]\nDescription=NVIDIA oem-config (waits for a monitor)\n"
                "Requires=basic.target nv-oem-config.service\nAfter=basic.target\n"
                "AllowIsolate=yes\n"),
    # Restarted on failure: lab boot remounts the card's cgroup controllers writable while
    # its systemd starts the first units, and a unit started in that moment can fail to
    # attach to its cgroup (status 219/CGROUP, seen with 4 cards booting at once on 2
    # cores); without this one the card runs no arm64 image.
    StandinFile("/lib/systemd/system/fleetimg-lab-binfmt.service", unit(
        "arm64 images through the host's QEMU (lab only)",
        "DefaultDependencies=no\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/usr/local/lib/fleetimg-lab-binfmt\nRestart=on-failure\nRestartSec=1\n",
        install="sysinit.target")),
)

# (link, target): how the package or NVIDIA's image enables them.
SYMLINKS: tuple[tuple[str, str], ...] = (
    ("/etc/systemd/system/default.target", "/lib/systemd/system/nv-oem-config.target"),
    ("/etc/systemd/system/multi-user.target.wants/nvfb-early.service",
     "/lib/systemd/system/nvfb-early.service"),
    ("/etc/systemd/system/multi-user.target.wants/nvfb.service",
     "/lib/systemd/system/nvfb.service"),
    ("/etc/systemd/system/multi-user.target.wants/nv-late-init.service",
     "/lib/systemd/system/nv-late-init.service"),
    ("/etc/systemd/system/multi-user.target.wants/nvzramconfig.service",
     "/etc/systemd/system/nvzramconfig.service"),
    ("/etc/systemd/system/sysinit.target.wants/fleetimg-lab-binfmt.service",
     "/lib/systemd/system/fleetimg-lab-binfmt.service"),
    ("/etc/skel/Desktop/l4t-readme.desktop", "/usr/share/applications/l4t-readme.desktop"),
    # binfmt_misc is one for the whole kernel here: the card's systemd-binfmt would flush the
    # host's registrations (qemu-aarch64 included) when the card boots. Lab only.
    ("/etc/systemd/system/systemd-binfmt.service", "/dev/null"),
    ("/etc/systemd/system/proc-sys-fs-binfmt_misc.automount", "/dev/null"),
)


# What NVIDIA's device trees say, per module (one example part each), for lab nodes and
# cards that play that module: probe reads /etc/fleetimg-lab/device-tree-compatible there.
LAB_COMPATIBLE = {
    "nano-4gb": "nvidia,p3449-0000-b00+p3448-0000-b00 nvidia,jetson-nano nvidia,tegra210",
    "orin-nano": "nvidia,p3768-0000+p3767-0005-super nvidia,p3767-0005 nvidia,tegra234",
    "orin-nx": "nvidia,p3768-0000+p3767-0000 nvidia,p3767-0000 nvidia,tegra234",
    "agx-orin": "nvidia,p3737-0000+p3701-0005 nvidia,p3701-0005 nvidia,tegra234",
}
MODULE_TEGRA_BOARD = {"tx2": "t186ref", "xavier-nx": "t186ref", "xavier-nx-emmc": "t186ref",
                      "agx-xavier": "t186ref"}


def orin_card_files(l4t_release: str) -> tuple[StandinFile, ...]:
    """What makes a lab card an Orin Nano's (R36): its power model file, its device tree's
    compatible string and its module firmware, where probe reads them in the lab."""
    return (
        StandinFile("/etc/nvpmodel/nvpmodel_p3767_0003_super.conf", NVPMODEL_ORIN_NANO),
        StandinFile("/etc/fleetimg-lab/device-tree-compatible",
                    "".join(f"{part}\0" for part in LAB_COMPATIBLE["orin-nano"].split())),
        StandinFile("/etc/fleetimg-lab/firmware", f"{l4t_release}\n"),
    )
