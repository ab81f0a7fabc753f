"""The one place fleetimg runs external programs.

Argument lists only, never a shell on this machine; stdin closed unless the caller streams;
every command logged at debug level as `+ cmd` with secrets masked; a failure raises
CommandError carrying the command, exit code and the tail of stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import IO

from fleetimg import stop
from fleetimg.errors import CommandError, ToolMissing

log = logging.getLogger("fleetimg.programs")

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
    "systemd-nspawn": "systemd-container",
    "docker-registry": "docker-registry",
    "mformat": "mtools",
    "mcopy": "mtools",
    "dnsmasq": "dnsmasq-base",
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
    """Run a command to completion, capturing stdout and stderr as text.

    After a stop (Ctrl-C, SIGTERM) nothing new starts, except in stop.cleanup().
    """
    argv = [str(a) for a in argv]
    secrets = tuple(secrets)
    stop.check()
    log.debug("+ %s", format_argv(argv, secrets))
    full_env = {**os.environ, **env} if env else None
    if isinstance(input, str):
        input = input.encode()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
        )
    except FileNotFoundError:
        require_tool(argv[0])
        raise
    stop.track(proc)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _abandon(proc)
        raise CommandError(
            [mask(a, secrets) for a in argv], -1, f"timed out after {timeout:.0f} s", hint=hint
        ) from exc
    except BaseException:
        _abandon(proc)
        raise
    stop.child_ended(proc.returncode)
    stdout = out.decode(errors="replace")
    stderr = err.decode(errors="replace")
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        stop.check()  # a child ended by the stop is not the command's own failure
        # The error travels to logs and the screen: it carries the masked command only.
        raise CommandError([mask(a, secrets) for a in argv], proc.returncode,
                           mask(stderr, secrets), hint)
    return result


def _abandon(proc: subprocess.Popen[bytes]) -> None:
    """Kill a command and stop listening to it. Its pipes are not drained: an ssh client
    multiplexed over a master hands its stdio to the master, which keeps them open until
    the (perhaps frozen) node closes the session."""
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def run_detached(argv: Sequence[str]) -> tuple[int, str]:
    """Run a command that forks a daemon holding its stdio (ssh -f): stdout goes to
    /dev/null and stderr to a file, not pipes, or we would wait for the daemon's EOF.
    Returns (exit code, stderr)."""
    argv = [str(a) for a in argv]
    stop.check()
    log.debug("+ %s", format_argv(argv))
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        except FileNotFoundError:
            require_tool(argv[0])
            raise
        stop.track(proc)
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err.seek(0)
        return rc, err.read().decode(errors="replace")


def spawn(
    argv: Sequence[str],
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    detach: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a command for streaming; the caller owns the pipes and must wait().

    A stop ends it, unless `detach` (a service meant to outlive fleetimg, in its own
    session so a Ctrl-C in the terminal does not reach it either)."""
    argv = [str(a) for a in argv]
    stop.check()
    log.debug("+ %s", format_argv(argv, secrets))
    full_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=full_env,
                                start_new_session=detach)
    except FileNotFoundError:
        require_tool(argv[0])
        raise
    if not detach:
        stop.track(proc)
    return proc


def pid_alive(pid: int | None) -> bool:
    """Whether a process runs. A child of ours that ended is reaped here, or it would linger
    as a zombie that still answers signal 0."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
