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
    "instead, or pass --allow-cloned to reset the per-board identity (machine-id and SSH host "
    "keys, as on every card, and the K3s node password and agent state) on the card."
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
    # Only signals NVIDIA's stock image never has count as "booted". SSH host keys and a
    # machine-id do not: whether the stock image ships them is unverified, and every card
    # gets both removed anyway (docs/first-boot.md).
    if fs.stat("/etc/nv/nvfirstboot") is None:
        booted.append("/etc/nv/nvfirstboot is gone (NVIDIA's first boot already ran)")
    if fs.stat("/etc/rancher/node/password") is not None:
        booted.append("/etc/rancher/node/password present (K3s already joined)")
    if fs.stat("/var/lib/rancher/k3s/agent") is not None:
        booted.append("/var/lib/rancher/k3s/agent exists (a K3s agent ran)")
    if fs.stat("/etc/fleetimg/firstboot.done") is not None:
        booted.append("/etc/fleetimg/firstboot.done exists (a fleetimg card that booted)")
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
