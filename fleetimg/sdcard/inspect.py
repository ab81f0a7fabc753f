"""What is in an SD card image's root filesystem: L4T release, and whether it comes from a
booted board (a "cloned card"), read without mounting.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetimg.errors import UsageError
from fleetimg.l4t import TegraRelease, parse_nv_tegra_release
from fleetimg.sdcard.ext4 import Ext4

CLONED_EXPLANATION = (
    "This image comes from a board that has already booted. NVIDIA's first-boot setup "
    "(/etc/nv/nvfirstboot: the power model for *this* board, the tegra library paths, the "
    "display manager, fresh SSH host keys) ran there and will not run again, so another board "
    "would boot with the source board's power model, SSH host keys, machine-id and hostname; "
    "duplicate machine-ids and hostnames also break K3s joins. Write NVIDIA's original image "
    "instead, or pass --allow-cloned to reset the per-board identity (machine-id, SSH host "
    "keys, K3s node password) on the card."
)


@dataclass(frozen=True)
class RootfsReport:
    tegra: TegraRelease | None
    booted_markers: tuple[str, ...]  # any of these: the rootfs has run on a board
    configured_markers: tuple[str, ...]  # set up (user, no wizard), but never booted

    @property
    def booted(self) -> bool:
        return bool(self.booted_markers)


def inspect_rootfs(fs: Ext4) -> RootfsReport:
    tegra = None
    text = fs.read_text("/etc/nv_tegra_release")
    if text:
        try:
            tegra = parse_nv_tegra_release(text)
        except UsageError:
            tegra = None
    booted: list[str] = []
    configured: list[str] = []
    if fs.stat("/etc/nv/nvfirstboot") is None:
        booted.append("/etc/nv/nvfirstboot is gone (NVIDIA's first boot already ran)")
    keys = [k for k in fs.listdir("/etc/ssh") if k.startswith("ssh_host_") and k.endswith("_key")]
    if keys:
        booted.append(f"SSH host keys present ({', '.join(sorted(keys))})")
    machine_id = fs.read_text("/etc/machine-id")
    if machine_id and machine_id.strip():
        booted.append("/etc/machine-id is set")
    if fs.stat("/etc/rancher/node/password") is not None:
        booted.append("/etc/rancher/node/password present (K3s already joined)")
    passwd = fs.read_text("/etc/passwd") or ""
    users = [f[0] for f in (ln.split(":") for ln in passwd.splitlines())
             if len(f) > 2 and f[2].isdigit() and 1000 <= int(f[2]) < 65534]
    if users:
        configured.append(f"login users exist: {', '.join(users)}")
    target = fs.stat("/etc/systemd/system/default.target")
    if target is not None and target.link_target and \
            not target.link_target.endswith("nv-oem-config.target"):
        configured.append(f"default.target is {target.link_target.rsplit('/', 1)[-1]}, "
                          "not the oem-config wizard")
    return RootfsReport(tegra, tuple(booted), tuple(configured))
