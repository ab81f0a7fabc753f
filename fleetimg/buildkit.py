"""Find a way to run a BuildKit build on this workstation, and how it runs arm64 steps.

`docker buildx build` when the buildx plugin exists (with `--builder NAME`, any buildx
builder: a docker-container one, or a remote one on a board); else the classic
`DOCKER_BUILDKIT=1 docker build`, which only docker CLIs older than 23 still offer (newer
ones insist on buildx). Debian 12 packages no buildx plugin, but its docker.io CLI is 20.10.

arm64 steps run natively where the builder is arm64 (an arm64 workstation, a builder on a
board, an engine reached through DOCKER_HOST=ssh://board), and under QEMU's binfmt handler
on an x86 one: only that last case needs the handler (`arm64_route`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from fleetimg import programs
from fleetimg.errors import ToolMissing

CLASSIC_CANDIDATES = ("docker", "/usr/bin/docker")


@dataclass(frozen=True)
class BuildCommand:
    argv: tuple[str, ...]  # e.g. ("docker", "buildx", "build") or ("/usr/bin/docker", "build")
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""
    buildx: str | None = None  # the docker CLI that has the buildx plugin, if used
    builder: str | None = None  # a named buildx builder; None: the current one


def _client_major(cli: str) -> int | None:
    out = programs.run([cli, "version", "--format", "{{.Client.Version}}"], check=False,
                     timeout=30)
    version = out.stdout.strip()
    return int(version.split(".")[0]) if version[:1].isdigit() else None


def find_build_command(builder: str | None = None) -> BuildCommand:
    """How to build; `builder` names a buildx builder (`docker buildx ls`)."""
    docker = shutil.which("docker")
    if docker and programs.run([docker, "buildx", "version"], check=False,
                             timeout=30).returncode == 0:
        if builder is None:
            return BuildCommand((docker, "buildx", "build", "--load"), {}, "docker buildx",
                                buildx=docker)
        return BuildCommand((docker, "buildx", "build", "--builder", builder, "--load"), {},
                            f"docker buildx, builder {builder}", buildx=docker,
                            builder=builder)
    if builder is not None:
        raise ToolMissing(
            f"--builder {builder} needs docker buildx, and this docker CLI has no buildx "
            "plugin",
            hint="install the buildx plugin (docker-buildx-plugin from Docker's repository), "
            "or build on a board's engine instead: DOCKER_HOST=ssh://USER@BOARD fleetimg "
            "build ...")
    seen = set()
    for name in CLASSIC_CANDIDATES:
        cli = shutil.which(name)
        if cli is None or cli in seen:
            continue
        seen.add(cli)
        major = _client_major(cli)
        if major is not None and major < 23:
            return BuildCommand((cli, "build"), {"DOCKER_BUILDKIT": "1"},
                                f"engine BuildKit via {cli} (Docker CLI {major})")
    raise ToolMissing(
        "no BuildKit builder: no docker buildx plugin, and no docker CLI older than 23 "
        "(newer CLIs need buildx for BuildKit)",
        hint="install the buildx plugin (docker-buildx-plugin from Docker's repository), or "
        "Debian's docker.io (apt-get install docker.io) whose CLI is /usr/bin/docker",
    )


def parse_platforms(inspect: str) -> tuple[str, ...]:
    """The platforms every node of a builder reports (`docker buildx inspect` output:
    `Platforms: linux/amd64, linux/arm64*, ...`; a `*` marks one set by the user)."""
    found: list[str] = []
    for line in inspect.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Platforms":
            found += [p.strip().rstrip("*") for p in value.split(",") if p.strip()]
    return tuple(dict.fromkeys(found))


def builder_platforms(command: BuildCommand) -> tuple[str, ...]:
    """What the buildx builder the build uses can run (empty: not a buildx build)."""
    if command.buildx is None:
        return ()
    argv = [command.buildx, "buildx", "inspect", "--bootstrap"]
    if command.builder is not None:
        argv.append(command.builder)
    result = programs.run(argv, check=False, timeout=300)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolMissing(f"buildx builder {command.builder or '(current)'} does not answer: "
                          f"{last}", hint="docker buildx ls lists the builders and their state")
    return parse_platforms(result.stdout)


def engine_arch() -> str | None:
    """The Docker engine's architecture (`arm64`, `amd64`), wherever DOCKER_HOST points."""
    docker = shutil.which("docker") or "docker"
    result = programs.run([docker, "version", "--format", "{{.Server.Arch}}"], check=False,
                          timeout=30)
    arch = result.stdout.strip()
    return arch or None


def runs_arm64_natively(arch: str | None) -> bool:
    return arch in ("arm64", "aarch64")


@dataclass(frozen=True)
class Arm64Route:
    """How a build's arm64 steps run, said in the build's output."""

    how: str
    needs_binfmt: bool  # only QEMU on this machine's kernel needs the handler


def arm64_route(command: BuildCommand, platforms: tuple[str, ...],
                arch: str | None) -> Arm64Route:
    """A buildx builder that reports linux/arm64 runs it (natively or with its own QEMU:
    either way, not this machine's concern); an arm64 engine runs it natively; otherwise
    this machine's kernel must run arm64 programs through QEMU's binfmt handler."""
    if "linux/arm64" in platforms:
        name = command.builder or "the current buildx builder"
        return Arm64Route(f"{name} runs linux/arm64", needs_binfmt=False)
    if command.builder is not None:
        raise ToolMissing(
            f"buildx builder {command.builder} does not run linux/arm64 (it reports "
            f"{', '.join(platforms) or 'no platforms'})",
            hint="name a builder on an arm64 machine (docker buildx create --name jetson "
            "ssh://USER@BOARD), or one whose machine has QEMU's arm64 binfmt handler")
    if runs_arm64_natively(arch):
        return Arm64Route("the Docker engine is arm64: native", needs_binfmt=False)
    return Arm64Route(f"QEMU on this {arch or 'unknown'} machine", needs_binfmt=True)
