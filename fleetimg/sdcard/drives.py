"""Which drives may be written, and why not. The safety net balenaEtcher and Raspberry Pi
Imager users expect, and stricter: the kernel's own view (sysfs, mountinfo, swaps) decides;
pyudev only adds vendor/model/bus names when a udev database exists.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetimg.errors import DiskError, DriveRefused
from fleetimg.units import human_bytes

SYS_BLOCK = Path("/sys/class/block")
LARGE_DRIVE = 128 * 10**9
HIDDEN_PREFIXES = ("ram", "zram", "dm-", "md", "sr", "fd", "nbd")


@dataclass(frozen=True)
class Drive:
    path: Path
    name: str
    devno: tuple[int, int]
    size: int
    removable: bool
    read_only: bool
    partition_of: str | None
    partitions: tuple[str, ...]
    mountpoints: tuple[str, ...]
    swap: bool
    holders: tuple[str, ...]
    system: bool
    model: str | None = None
    bus: str | None = None
    backing_file: Path | None = None  # a loop device's file

    @property
    def description(self) -> str:
        parts = [p for p in (self.model, self.bus) if p]
        return " ".join(parts) or ("removable" if self.removable else "fixed")


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _name_for_devno(devno: tuple[int, int]) -> str | None:
    link = Path(f"/sys/dev/block/{devno[0]}:{devno[1]}")
    if not link.exists():
        return None
    return link.resolve().name


def _disk_of(name: str) -> str:
    """The whole disk a block device name belongs to (itself if it is a disk)."""
    sysdir = (SYS_BLOCK / name).resolve()
    if (sysdir / "partition").exists():
        return sysdir.parent.name
    return name


def _underlying_disks(name: str, seen: set[str] | None = None) -> set[str]:
    """Disks beneath a device, following dm/md slaves (LVM, LUKS, RAID)."""
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    slaves_dir = SYS_BLOCK / name / "slaves"
    slaves = [p.name for p in slaves_dir.iterdir()] if slaves_dir.is_dir() else []
    if not slaves:
        return {_disk_of(name)}
    out: set[str] = set()
    for slave in slaves:
        out |= _underlying_disks(slave, seen)
    return out


def _disks_holding(path: Path) -> set[str]:
    st = os.stat(path)
    name = _name_for_devno((os.major(st.st_dev), os.minor(st.st_dev)))
    return _underlying_disks(name) if name else set()


def _mounts() -> list[tuple[tuple[int, int], str, str]]:
    """(devno, source, mountpoint) of every mount."""
    out = []
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        major, _, minor = fields[2].partition(":")
        sep = fields.index("-")
        source = fields[sep + 2] if len(fields) > sep + 2 else ""
        out.append(((int(major), int(minor)), source, fields[4].replace("\\040", " ")))
    return out


def _swap_devnos() -> set[tuple[int, int]]:
    out = set()
    for line in _read(Path("/proc/swaps")).splitlines()[1:]:
        dev = line.split()[0] if line.split() else ""
        try:
            st = os.stat(dev)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            out.add((os.major(st.st_rdev), os.minor(st.st_rdev)))
    return out


def _udev_properties(name: str) -> dict[str, str]:
    if not Path("/run/udev/data").is_dir():
        return {}  # no udev here (containers, CI): sysfs alone
    try:
        import pyudev

        device = pyudev.Devices.from_name(pyudev.Context(), "block", name)
        return {k: str(v) for k, v in device.properties.items()}
    except Exception:
        return {}


def _devno(name: str) -> tuple[int, int]:
    major, _, minor = _read(SYS_BLOCK / name / "dev", "0:0").partition(":")
    return int(major), int(minor)


def describe(path: Path) -> Drive:
    """Everything fleetimg needs to know to decide whether `path` may be written."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DriveRefused(f"{path}: no such device",
                           hint="list candidate drives with `fleetimg sdcard --list`") from None
    if not stat.S_ISBLK(st.st_mode):
        raise DriveRefused(f"{path}: not a block device",
                           hint="give a whole disk such as /dev/sdb, or an image file path "
                           "outside /dev")
    devno = (os.major(st.st_rdev), os.minor(st.st_rdev))
    name = _name_for_devno(devno)
    if name is None:
        raise DriveRefused(f"{path}: the kernel does not know this device")
    sysdir = SYS_BLOCK / name
    partition_of = _disk_of(name) if (sysdir / "partition").exists() else None
    disk = partition_of or name
    partitions = tuple(sorted(
        p.name for p in (SYS_BLOCK / disk).iterdir()
        if p.name.startswith(disk) and (p / "partition").exists()
    ))
    members = {disk, *partitions}
    member_devnos = {_devno(m): m for m in members}
    mountpoints = tuple(sorted(
        mnt for dev, source, mnt in _mounts()
        if dev in member_devnos or (source.startswith("/dev/") and Path(source).name in members)
    ))
    holders = tuple(sorted({h.name for m in members
                            for h in (SYS_BLOCK / m / "holders").glob("*")}))
    system_disks = _disks_holding(Path("/"))
    props = _udev_properties(disk)
    model = props.get("ID_MODEL") or _read(SYS_BLOCK / disk / "device/model") or None
    return Drive(
        path=path,
        name=name,
        devno=devno,
        size=int(_read(sysdir / "size", "0")) * 512,
        removable=_read(SYS_BLOCK / disk / "removable", "0") == "1",
        read_only=_read(sysdir / "ro", "0") == "1" or _read(SYS_BLOCK / disk / "ro") == "1",
        partition_of=partition_of,
        partitions=partitions,
        mountpoints=mountpoints,
        swap=bool(set(member_devnos) & _swap_devnos()),
        holders=holders,
        system=disk in system_disks,
        model=model,
        bus=props.get("ID_BUS") or None,
        backing_file=_backing_file(disk),
    )


def _backing_file(disk: str) -> Path | None:
    text = _read(SYS_BLOCK / disk / "loop" / "backing_file")
    return Path(text) if text else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_drive(
    drive: Drive, *, image_bytes: int, source: Path, allow_non_removable: bool,
    also_sources: tuple[Path, ...] = (),
) -> list[str]:
    """Raise DriveRefused with the first reason not to write; return warnings otherwise.

    `also_sources`: other files the source came from (a compressed original)."""
    p = drive.path
    if drive.backing_file is not None and any(
            _same_file(drive.backing_file, s) for s in (source, *also_sources)):
        raise DriveRefused(f"{p} is a loop device backed by the source image "
                           f"{drive.backing_file}: writing it would overwrite the source",
                           hint="write to another card or image file")
    if drive.partition_of is not None:
        raise DriveRefused(f"{p} is a partition of /dev/{drive.partition_of}, not a whole disk",
                           hint=f"write to /dev/{drive.partition_of} (every partition is "
                           "replaced by the image's)")
    if drive.system:
        raise DriveRefused(f"{p} holds this computer's root filesystem",
                           hint="put the card in a reader; `fleetimg sdcard --list` shows "
                           "which drives can be written")
    if drive.mountpoints:
        raise DriveRefused(f"{p} is mounted at {', '.join(drive.mountpoints)}",
                           hint=f"unmount it first: umount {' '.join(drive.mountpoints)}")
    if drive.swap:
        raise DriveRefused(f"{p} is in use as swap", hint="swapoff it first")
    if drive.holders:
        raise DriveRefused(f"{p} is held by {', '.join(drive.holders)} (LVM, RAID or "
                           "encryption)", hint="deactivate those devices first")
    if drive.read_only:
        raise DriveRefused(f"{p} is read-only (write-protect switch on the card or adapter?)")
    if drive.name in _disks_holding(source) or drive.partition_of in _disks_holding(source):
        raise DriveRefused(f"{p} holds the source image {source}")
    if drive.size < image_bytes:
        raise DriveRefused(f"{p} is too small: {human_bytes(drive.size)} for an image of "
                           f"{human_bytes(image_bytes)}", hint="use a larger card")
    if not drive.removable and not allow_non_removable:
        raise DriveRefused(f"{p} is not a removable drive",
                           hint="if it really is your SD card reader, add "
                           "--allow-non-removable")
    warnings = []
    if drive.size > LARGE_DRIVE:
        warnings.append(f"{p} is {human_bytes(drive.size)}: larger than SD cards usually are; "
                        "make sure it is the card")
    return warnings


def open_exclusive(path: Path) -> int:
    """Open a whole disk for writing; the kernel refuses (EBUSY) while anything uses it."""
    try:
        return os.open(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise DriveRefused(f"{path} is busy: a partition is mounted or the device is held",
                               hint="unmount it and close programs using it") from exc
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise DriveRefused(f"{path}: cannot open for writing ({exc.strerror})",
                               hint="run as root, and check the write-protect switch") from exc
        raise DiskError(f"{path}: {exc.strerror}") from exc


def list_drives() -> Iterator[Drive]:
    """Whole disks that could be a card reader, for `sdcard --list`."""
    for entry in sorted(SYS_BLOCK.iterdir()):
        name = entry.name
        if (entry / "partition").exists() or name.startswith(HIDDEN_PREFIXES):
            continue
        if int(_read(entry / "size", "0")) == 0:
            continue  # empty card reader slot, unattached loop device
        try:
            yield describe(Path("/dev") / name)
        except DiskError:
            continue
