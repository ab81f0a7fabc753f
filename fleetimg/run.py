"""The one place fleetimg runs external programs.

Argument lists only, never a shell on this machine; stdin closed unless the caller streams;
every command logged at debug level as `+ cmd` with secrets masked; a failure raises
CommandError carrying the command, exit code and the tail of stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import IO

from fleetimg.errors import CommandError, ToolMissing

log = logging.getLogger("fleetimg.run")

# Debian package that provides each tool fleetimg may call, for the install hint.
TOOL_PACKAGES: Mapping[str, str] = {
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "docker": "docker.io",
    "dockerd": "docker.io",
    "debootstrap": "debootstrap",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "mke2fs": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "sgdisk": "gdisk",
    "update-binfmts": "binfmt-support",
    "qemu-aarch64-static": "qemu-user-static",
    "zstd": "zstd",
    "pigz": "pigz",
    "losetup": "mount",
    "tc": "iproute2",
    "bmaptool": "bmap-tools",
}


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def format_argv(argv: Sequence[str], secrets: Iterable[str] = ()) -> str:
    return mask(shlex.join(argv), secrets)


def find_tool(name: str) -> str | None:
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        raise ToolMissing(
            f"{name} is not installed on this machine",
            hint=f"apt-get install {package}",
        )
    return path


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    secrets: Iterable[str] = (),
    hint: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing stdout and stderr as text."""
    argv = [str(a) for a in argv]
    secrets = tuple(secrets)
    log.debug("+ %s", format_argv(argv, secrets))
    full_env = {**os.environ, **env} if env else None
    if isinstance(input, str):
        input = input.encode()
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError:
        require_tool(argv[0])
        raise
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            [mask(a, secrets) for a in argv], -1, f"timed out after {timeout:.0f} s", hint=hint
        ) from exc
    stdout = proc.stdout.decode(errors="replace")
    stderr = proc.stderr.decode(errors="replace")
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        # The error travels to logs and the screen: it carries the masked command only.
        raise CommandError([mask(a, secrets) for a in argv], proc.returncode,
                           mask(stderr, secrets), hint)
    return result


def spawn(
    argv: Sequence[str],
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> subprocess.Popen[bytes]:
    """Start a command for streaming; the caller owns the pipes and must wait()."""
    argv = [str(a) for a in argv]
    log.debug("+ %s", format_argv(argv, secrets))
    full_env = {**os.environ, **env} if env else None
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=full_env)
    except FileNotFoundError:
        require_tool(argv[0])
        raise
