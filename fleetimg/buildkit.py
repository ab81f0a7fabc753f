"""Find a way to run a BuildKit build on this workstation.

`docker buildx build` when the buildx plugin exists; else the classic `DOCKER_BUILDKIT=1
docker build`, which only docker CLIs older than 23 still offer (newer ones insist on
buildx). Debian 12 packages no buildx plugin, but its docker.io CLI is 20.10.
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


def _client_major(cli: str) -> int | None:
    out = programs.run([cli, "version", "--format", "{{.Client.Version}}"], check=False,
                     timeout=30)
    version = out.stdout.strip()
    return int(version.split(".")[0]) if version[:1].isdigit() else None


def find_build_command() -> BuildCommand:
    docker = shutil.which("docker")
    if docker and programs.run([docker, "buildx", "version"], check=False,
                             timeout=30).returncode == 0:
        return BuildCommand((docker, "buildx", "build", "--load"), {}, "docker buildx")
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
