"""`fleetimg sdcard`: plan, write, verify and personalise SD cards (or per-node image files).

Planning does every check before the first byte is written; writing an image file goes to
`NAME.part` and is renamed only when complete, so a failure never leaves a half-made image.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleetimg import newfile, stop
from fleetimg.errors import ClonedImage, DiskError, DriveRefused, FleetimgError, UsageError
from fleetimg.inventory import Fleet, Node
from fleetimg.nodestate.model import build_overlay, validate_settings
from fleetimg.nodestate.secrets import CardSecrets, card_secrets, persist
from fleetimg.nodestate.spec import ChangeSet
from fleetimg.parallel import NodeOutcome, for_each_node
from fleetimg.sdcard import drives
from fleetimg.sdcard.bmap import write_bmap
from fleetimg.sdcard.ext4 import Ext4
from fleetimg.sdcard.inspect import CLONED_EXPLANATION, RootfsReport, inspect_rootfs
from fleetimg.sdcard.overlay import apply_overlay, verify_overlay
from fleetimg.sdcard.source import resolve_source
from fleetimg.sdcard.writer import (
    WritePlan,
    open_file_target,
    plan_write,
    verify_mapped,
    write_mapped,
)

# (phase, bytes done in this call, phase total); phases: write, verify, overlay
CardProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SdcardOptions:
    verify: bool = True
    allow_cloned: bool = False
    allow_non_removable: bool = False
    force: bool = False  # replace an existing image file


@dataclass(frozen=True)
class SourceImage:
    original: Path
    raw: Path
    plan: WritePlan
    report: RootfsReport

    @property
    def app_offset(self) -> int:
        app = self.plan.table.by_name("APP")
        assert app is not None
        return app.offset


@dataclass(frozen=True)
class CardPlan:
    node: Node
    target: Path
    drive: drives.Drive | None
    warnings: tuple[str, ...]
    source: SourceImage
    overlay: ChangeSet
    secrets: CardSecrets = field(default_factory=CardSecrets)

    @property
    def is_device(self) -> bool:
        return self.drive is not None


@dataclass(frozen=True)
class CardResult:
    node: str
    target: str
    image_bytes: int
    written_bytes: int
    seconds: float
    verified: bool
    overlay: list[dict[str, object]] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    bmap: str | None = None  # the block map beside an image-file card (bmaptool copy)


def prepare_source(image: Path, progress: Callable[[int, int], None] | None = None) -> SourceImage:
    raw = resolve_source(image, progress)
    try:
        plan = plan_write(raw)
        fs = Ext4(raw, plan.table.by_name("APP").offset)  # type: ignore[union-attr]
        return SourceImage(image, raw, plan, inspect_rootfs(fs))
    except FleetimgError as exc:
        if raw == image:
            raise
        # What decompressed is no card image: it leaves the cache, and the user hears of
        # the file they named, not of the cache's copy.
        raw.unlink(missing_ok=True)
        raise DiskError(exc.message.replace(str(raw), str(image)),
                        hint=exc.hint or "is it a JetPack SD card image?") from exc


FIRMWARE_CHECK = "sudo nvbootctrl dump-slots-info"


def check_firmware(source: SourceImage, node: Node) -> list[str]:
    """A JetPack 6 card does not boot on firmware older than 36.0 (QSPI/UEFI are on the
    module, not the card): refuse what is known not to boot, warn where it is unknown."""
    tegra = source.report.tegra
    if tegra is None or tegra.release.major < 36:
        return []
    if node.firmware is None:
        return [f"{node.name}: firmware unknown; an L4T {tegra.release} card needs 36.x "
                f"firmware on the module. Check with `{FIRMWARE_CHECK}` (its \"Current "
                "version\" line) and set firmware in fleet.toml"]
    if node.firmware.major < tegra.release.major:
        raise UsageError(
            f"{node.name}: firmware {node.firmware} will not boot an L4T {tegra.release} card",
            hint="update the firmware first (NVIDIA's path to JetPack 6.2: boot a JetPack "
            "5.1.3 card, `sudo apt install nvidia-l4t-jetson-orin-nano-qspi-updater` and "
            "reboot to 36.4.0 firmware, then write the JetPack 6 card), then set firmware in "
            "fleet.toml")
    return []


def check_card_fits(source: SourceImage, node: Node) -> None:
    """Refuse a card the node's module cannot boot: a module without an SD slot, an L4T
    release the module never ran, or an R32 image built for another board family (a
    Nano's t210 image on a TX2). Each refusal names what fits."""
    module = node.module
    if not module.sd_card:
        raise UsageError(
            f"{node.name}: a {module.description} has no SD card slot; it boots from "
            "eMMC or NVMe", hint="flash it over USB with NVIDIA's SDK Manager or "
            "l4t_initrd_flash.sh, then `fleetimg apply --to "
            f"{node.name}` gives it what a card would")
    tegra = source.report.tegra
    if tegra is None:
        return
    if not module.supports(tegra.release):
        raise UsageError(
            f"{node.name}: {source.original} is an L4T {tegra.release} image, which a "
            f"{module.description} cannot run", hint=f"a {module.name} runs "
            f"{module.releases_text}: use a JetPack SD card image of those releases")
    if tegra.release.major == 32 and tegra.board and module.r32_boards \
            and tegra.board not in module.r32_boards:
        raise UsageError(
            f"{node.name}: {source.original} is built for {tegra.board_description} "
            f"(BOARD {tegra.board}), not for a {module.description}",
            hint=f"use the SD card image NVIDIA publishes for the {module.name} "
            f"(BOARD {' or '.join(module.r32_boards)})")


def source_warnings(source: SourceImage, node: Node) -> list[str]:
    tegra = source.report.tegra
    if tegra is None:
        return ["the image has no /etc/nv_tegra_release: not an L4T image?"]
    if tegra.release != node.l4t:
        return [f"the image is L4T {tegra.release} but {node.name} is configured for "
                f"{node.l4t} in the inventory"]
    return []


def is_device_path(target: Path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(target).st_mode)
    except FileNotFoundError:
        return str(target).startswith("/dev/")


def plan_card(
    fleet: Fleet, node: Node, target: Path, source: SourceImage, options: SdcardOptions,
    secrets: CardSecrets | None = None,
) -> CardPlan:
    """Every check, nothing written. Raises on the first reason to refuse.

    `secrets`: shared by the cards of one run (plan_cards); read or made for this node
    alone when not given."""
    if secrets is None:
        secrets = card_secrets(fleet, [node])
    validate_settings(fleet, node)
    if source.report.booted and not options.allow_cloned:
        raise ClonedImage(
            f"{source.original} is a cloned card: "
            + "; ".join(source.report.booted_markers),
            hint=CLONED_EXPLANATION,
        )
    check_card_fits(source, node)
    warnings = source_warnings(source, node) + check_firmware(source, node)
    drive = None
    if is_device_path(target):
        drive = drives.describe(target)
        warnings += drives.check_drive(
            drive, image_bytes=source.plan.image_bytes, source=source.raw,
            allow_non_removable=options.allow_non_removable, also_sources=(source.original,),
        )
    else:
        if target.resolve() in (source.raw.resolve(), source.original.resolve()) or any(
                target.exists() and os.path.samefile(target, s)
                for s in (source.raw, source.original)):
            raise DriveRefused(f"{target} is the source image itself",
                               hint="name a new file for the card image")
        if not target.parent.is_dir():
            raise UsageError(f"{target.parent} does not exist",
                             hint="create the directory first")
        if target.exists():
            if not target.is_file():
                raise DriveRefused(f"{target} exists and is not a regular file",
                                   hint="name a file for the card image, or a whole disk "
                                   "such as /dev/sdb for a card")
            if not options.force:
                raise DriveRefused(f"{target} already exists",
                                   hint="add --force to replace it, or name a new file")
            warnings.append(f"{target} exists and will be replaced (--force)")
        newfile.check_replaceable(target)
        for staged in staging_paths(target):
            newfile.check_leftover(staged)
    tegra = source.report.tegra
    overlay = build_overlay(fleet, node, Ext4(source.raw, source.app_offset), secrets,
                            image_release=tegra.release if tegra else None,
                            reset_identity=options.allow_cloned and source.report.booted)
    return CardPlan(node, target, drive, tuple(warnings), source, overlay, secrets)


def plan_cards(fleet: Fleet, pairs: Sequence[tuple[Node, Path]], source: SourceImage,
               options: SdcardOptions) -> list[CardPlan]:
    """Plans for several cards of one run, sharing one set of secrets; writes nothing."""
    found = card_secrets(fleet, [node for node, _ in pairs])
    return [plan_card(fleet, node, target, source, options, found) for node, target in pairs]


def write_card(plan: CardPlan, options: SdcardOptions,
               progress: CardProgress | None = None) -> CardResult:
    start = time.monotonic()
    wplan = plan.source.plan
    report = progress or (lambda phase, n, total: None)
    persist(plan.secrets)  # keys and node passwords the card carries, kept beside
    written_path, bmap_part = staging_paths(plan.target)
    if plan.is_device:
        fd = drives.open_exclusive(plan.target)
        written_path = plan.target
    else:
        # Leftovers of a killed run go (only plain files of ours: see fleetimg.newfile);
        # then both are created new, never through a link planted there.
        newfile.remove_leftover(written_path)
        newfile.remove_leftover(bmap_part)
        fd = open_file_target(written_path, wplan.image_bytes)
    placed = False
    try:
        try:
            if (same := newfile.same_inode(fd, (wplan.source, plan.source.original))):
                raise DriveRefused(f"{plan.target} is the source image {same} itself",
                                   hint="name a new file or another disk for the card")
            digest = write_mapped(wplan, fd, lambda n: report("write", n, wplan.mapped_bytes))
        finally:
            os.close(fd)
        if options.verify:
            verify_mapped(wplan, written_path, digest,
                          lambda n: report("verify", n, wplan.mapped_bytes))
        fs = Ext4(written_path, plan.source.app_offset)
        report("overlay", 0, len(plan.overlay.files))
        apply_overlay(fs, plan.overlay)
        verify_overlay(fs, plan.overlay)
        report("overlay", len(plan.overlay.files), len(plan.overlay.files))
        if not plan.is_device:
            write_bmap(written_path, bmap_part)
            stop.check()
            written_path.replace(plan.target)
            placed = True
            bmap_part.replace(bmap_path(plan.target))
    except BaseException as exc:
        # A half-written card never looks finished, nor is a card (it holds secrets) left
        # under a name nobody asked for: an image file's .part and .bmap.part go, and so
        # does the card if its block map could not follow it. A device is named as
        # unfinished (it holds part of an image and will not boot).
        if not plan.is_device:
            with stop.cleanup():
                for path in (written_path, bmap_part, *([plan.target] if placed else [])):
                    with contextlib.suppress(OSError):
                        path.unlink()
        elif stop.requested():
            stop.note_unfinished(f"{plan.node.name}: {plan.target} was only partly written "
                                 "and will not boot; write it again")
        if isinstance(exc, OSError):
            # Out of space, a read-only or immutable target, a vanished directory: the
            # user's to fix, not a fleetimg bug.
            where = exc.filename or plan.target
            raise DiskError(f"writing the card to {plan.target} failed: {where}: "
                            f"{exc.strerror}", hint="nothing was left behind; fix the cause "
                            "(free space, permissions, chattr -i) and run again") from exc
        raise
    return CardResult(
        node=plan.node.name, target=str(plan.target), image_bytes=wplan.image_bytes,
        written_bytes=wplan.mapped_bytes, seconds=time.monotonic() - start,
        verified=options.verify, overlay=plan.overlay.summary(), notes=plan.overlay.notes,
        bmap=None if plan.is_device else str(bmap_path(plan.target)),
    )


def staging_paths(target: Path) -> tuple[Path, Path]:
    """Where an image-file card and its block map are written before they are renamed into
    place: NAME.part and NAME.bmap.part."""
    return (target.with_name(target.name + ".part"),
            target.with_name(target.name + ".bmap.part"))


def bmap_path(image: Path) -> Path:
    """Where bmaptool looks for an image's block map first: IMAGE.bmap."""
    return image.with_name(image.name + ".bmap")


def write_cards(
    plans: Sequence[CardPlan], options: SdcardOptions, *, parallel: int = 4,
    progress_for: Callable[[CardPlan], CardProgress] | None = None,
) -> list[NodeOutcome[CardResult]]:
    """Several cards at once; one failing card never stops the others."""
    by_node = {p.node.name: p for p in plans}
    for plan in plans:
        persist(plan.secrets)  # before any thread writes: one creator per file

    def one(node: Node) -> CardResult:
        plan = by_node[node.name]
        return write_card(plan, options, progress_for(plan) if progress_for else None)

    return for_each_node([p.node for p in plans], one, parallel=parallel)
