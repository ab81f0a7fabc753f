"""`fleetimg doctor`: is this workstation ready to build, push and flash?

Each check says what it found and, when it fails, the exact command that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetimg import programs
from fleetimg.errors import FleetimgError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True


def check_docker_engine() -> Check:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=10)
        version = client.version()
    except DockerException as exc:
        return Check(
            "docker engine", False, f"not reachable: {str(exc).splitlines()[0][:120]}",
            fix="apt-get install docker.io && (systemctl start docker || "
            "(nohup dockerd >/var/log/dockerd.log 2>&1 &))",
        )
    return Check("docker engine", True, f"Docker {version.get('Version')} "
                 f"(API {version.get('ApiVersion')})")


def check_buildkit() -> Check:
    from fleetimg.buildkit import find_build_command

    try:
        command = find_build_command()
    except FleetimgError as exc:
        return Check("buildkit", False, exc.message, fix=exc.hint)
    return Check("buildkit", True, command.description)


def check_qemu_binfmt(binfmt_dir: Path = BINFMT_DIR) -> Check:
    fix = (
        "apt-get install qemu-user-static binfmt-support && "
        "(mountpoint -q /proc/sys/fs/binfmt_misc || "
        "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc) && "
        "update-binfmts --enable qemu-aarch64"
    )
    entry = binfmt_dir / "qemu-aarch64"
    if not entry.exists():
        return Check("qemu arm64 binfmt", False, "qemu-aarch64 not registered", fix=fix)
    text = entry.read_text()
    lines = text.splitlines()
    if not lines or lines[0].strip() != "enabled":
        return Check("qemu arm64 binfmt", False, "qemu-aarch64 registered but disabled", fix=fix)
    flags = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("flags:")), "")
    if "F" not in flags:
        # Without F the kernel looks the interpreter up inside each container, where it is
        # not, so arm64 build steps fail with "exec format error".
        return Check(
            "qemu arm64 binfmt", False, f"registered without the F flag (flags: {flags or '-'})",
            fix="apt-get install qemu-user-static (its binfmt entry has F) && "
            "update-binfmts --disable qemu-aarch64 && update-binfmts --enable qemu-aarch64",
        )
    return Check("qemu arm64 binfmt", True, f"enabled, flags {flags}")


def check_arm64() -> Check:
    """arm64 steps of a build: native on an arm64 engine, else QEMU's binfmt handler."""
    from fleetimg.buildkit import engine_arch, runs_arm64_natively

    if runs_arm64_natively(engine_arch()):
        return Check("qemu arm64 binfmt", True, "not needed: the Docker engine is arm64")
    return check_qemu_binfmt()


def _tool_check(
    name: str, tools: list[str], package: str, why: str, required: bool = True
) -> Callable[[], Check]:
    def check() -> Check:
        missing = [t for t in tools if programs.find_tool(t) is None]
        if missing:
            return Check(name, False, f"missing {', '.join(missing)} ({why})",
                         fix=f"apt-get install {package}", required=required)
        return Check(name, True, ", ".join(programs.find_tool(t) or t for t in tools),
                     required=required)
    return check


CHECKS: list[Callable[[], Check]] = [
    check_docker_engine,
    check_buildkit,
    check_arm64,
    _tool_check("ssh client", ["ssh", "ssh-keygen"], "openssh-client", "reaching nodes"),
    _tool_check("debugfs/e2fsck", ["debugfs", "e2fsck"], "e2fsprogs", "SD card overlays"),
    _tool_check("sgdisk", ["sgdisk"], "gdisk", "reading SD card partition tables"),
    _tool_check("debootstrap", ["debootstrap"], "debootstrap", "lab node and stand-in images",
                required=False),
    _tool_check("zstd", ["zstd"], "zstd", "fast compression for push", required=False),
]


def run_checks() -> list[Check]:
    results = []
    for check in CHECKS:
        try:
            results.append(check())
        except FleetimgError as exc:
            results.append(Check(check.__name__, False, exc.message, fix=exc.hint))
    return results
