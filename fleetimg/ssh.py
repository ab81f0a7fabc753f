"""SSH to fleet nodes through the system OpenSSH client.

Using ssh(1) rather than a Python SSH library keeps the user's ~/.ssh/config, agent and
ProxyJump working. Each node gets one multiplexed master connection so the many short
commands of a probe or a push cost one handshake. Host keys are checked against fleetimg's
own known_hosts file with accept-new: a new board is learned once, a changed key is an error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fleetimg import knownhosts, programs, stop
from fleetimg.errors import CommandError, ConnectionFailed, HostKeyChanged, UsageError
from fleetimg.inventory import Node
from fleetimg.paths import control_dir

log = logging.getLogger("fleetimg.ssh")

SSH_FAILED = 255


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path
    connect_timeout: int = 10
    # A board that vanishes mid-transfer sends no RST; keepalives notice it.
    alive_interval: int = 5
    alive_count: int = 3
    persist_seconds: int = 120
    forward_agent: bool = False


class Ssh:
    """Runs commands on nodes. Thread-safe: one master connection per node."""

    def __init__(self, options: SshOptions) -> None:
        self.options = options
        self._locks: dict[str, threading.Lock] = {}
        self._answering: set[str] = set()  # nodes whose master this process has seen work
        self._guard = threading.Lock()
        control_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
        options.known_hosts.parent.mkdir(parents=True, exist_ok=True)

    def destination(self, node: Node) -> str:
        return f"{node.user}@{node.address}"

    def base_argv(self, node: Node, *, master: str = "no") -> list[str]:
        o = self.options
        argv = [
            "ssh",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={o.connect_timeout}",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={o.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ServerAliveInterval={o.alive_interval}",
            "-o", f"ServerAliveCountMax={o.alive_count}",
            "-o", f"ControlMaster={master}",
            # A master started with agent forwarding carries that agent: keep it apart.
            "-o", f"ControlPath={control_dir()}/%C{'-A' if o.forward_agent else ''}",
            "-o", f"ControlPersist={o.persist_seconds}",
            "-o", "LogLevel=ERROR",
            "-p", str(node.port),
        ]
        if node.dhcp:
            # A DHCP board's address changes with its lease, and a lease can go to another
            # board: its key is kept under its name, which stays.
            argv += ["-o", f"HostKeyAlias={node.name}"]
        if node.ssh_key is not None:
            argv += ["-i", str(node.ssh_key), "-o", "IdentitiesOnly=yes"]
        if o.forward_agent:
            argv += ["-A"]
        return argv

    def _lock(self, node: Node) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(node.name, threading.Lock())

    def connect(self, node: Node) -> None:
        """Open (or reuse) the node's master connection; raise ConnectionFailed if we can't."""
        with self._lock(node):
            check = programs.run(
                [*self.base_argv(node), "-O", "check", self.destination(node)], check=False
            )
            if check.returncode == 0:
                if node.name in self._answering:
                    return
                self._check_master(node)
                if node.name in self._answering:
                    return
            argv = [*self.base_argv(node, master="yes"), "-f", "-N", self.destination(node)]
            rc, stderr = programs.run_detached(argv)
            if rc != 0:
                raise self._classify(node, stderr)
            self._answering.add(node.name)

    def _check_master(self, node: Node) -> None:
        """A master left by an earlier run may lead to a board that stopped answering (hung,
        paused): commands through it would wait for the keepalives (~30 s). One round trip,
        bounded by the connect timeout, tells; a dead-end master is closed."""
        timeout = self.options.connect_timeout
        try:
            ok = programs.run([*self.base_argv(node), self.destination(node), "true"],
                            check=False, timeout=timeout).returncode == 0
        except CommandError:  # timed out
            self.disconnect(node)
            raise ConnectionFailed(
                f"{node.name} ({node.address}): not answering: no reply in {timeout} s over "
                "its open SSH connection",
                hint=f"is the board hung or frozen? try `ping {node.address}`; "
                "FLEETIMG_SSH_TIMEOUT sets how long to wait") from None
        if ok:
            self._answering.add(node.name)
        else:
            self.disconnect(node)  # broken master: a fresh one is opened below

    def _classify(self, node: Node, stderr: str) -> ConnectionFailed:
        # ssh reports everything as exit 255 with text on stderr; there is no typed error.
        text = stderr.strip()
        last = text.splitlines()[-1] if text else "no output from ssh"
        kh = self.options.known_hosts
        changed = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")
        if any(marker in text for marker in changed):
            return HostKeyChanged(
                f"{node.name} ({node.address}): SSH host key changed since fleetimg last "
                "connected; refusing to connect",
                hint=(
                    "if the board was reflashed or replaced, forget the old key with "
                    f"`ssh-keygen -f {kh} -R {knownhosts.host_pattern(*node.known_as)}` "
                    "and run again; otherwise "
                    "someone else may be answering at that address"
                ),
            )
        if "Permission denied" in text:
            return ConnectionFailed(
                f"{node.name} ({node.address}): login refused for user {node.user!r}: {last}",
                hint=f"check user and ssh_key in the inventory; test with "
                f"`ssh -i KEY {node.user}@{node.address}`",
            )
        if node.dhcp and "Could not resolve hostname" in text:
            return ConnectionFailed(
                f"{node.name}: not found: no lease names it and nothing answers for "
                f"{node.address}", hint="is the board powered and on the network? `fleetimg "
                "nodes` shows where fleetimg looked; [fleet] leases names a dnsmasq leases file")
        return ConnectionFailed(
            f"{node.name} ({node.address}:{node.port}): cannot connect: {last}",
            hint=f"is the board powered and on the network? try `ping {node.address}`",
        )

    def run(
        self,
        node: Node,
        command: str,
        *,
        input: str | bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command line on the node and capture its output."""
        self.connect(node)
        argv = [*self.base_argv(node), self.destination(node), command]
        result = programs.run(argv, input=input, timeout=timeout, check=False)
        if result.returncode != 0:
            stop.check()  # ssh ended by a stop: not the node's failure
        if result.returncode == SSH_FAILED and not result.stdout:
            raise self._classify(node, result.stderr)
        if check and result.returncode != 0:
            raise CommandError(
                [f"ssh {node.name}", command], result.returncode, result.stderr,
                hint=f"run it by hand: ssh {self.destination(node)} {command!r}",
            )
        return result

    def spawn(
        self,
        node: Node,
        command: str,
        *,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        stderr: int | IO[bytes] | None = subprocess.PIPE,
    ) -> subprocess.Popen[bytes]:
        """Start a streaming command on the node (bulk transfers); the caller waits."""
        self.connect(node)
        argv = [*self.base_argv(node), self.destination(node), command]
        return programs.spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr)

    def disconnect(self, node: Node) -> None:
        self._answering.discard(node.name)
        programs.run(
            [*self.base_argv(node), "-O", "exit", self.destination(node)], check=False
        )


def connect_timeout_from_env() -> int | None:
    """FLEETIMG_SSH_TIMEOUT, in whole seconds (1 to 600), or None when unset."""
    text = os.environ.get("FLEETIMG_SSH_TIMEOUT", "").strip()
    if not text:
        return None
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= 600:
        raise UsageError(f"FLEETIMG_SSH_TIMEOUT={text!r} is not a number of seconds from 1 "
                         "to 600", hint="e.g. FLEETIMG_SSH_TIMEOUT=10, or unset it for the "
                         "default (10 s)")
    return seconds


def ssh_for(known_hosts: Path, *, forward_agent: bool = False) -> Ssh:
    timeout = connect_timeout_from_env()
    options = SshOptions(known_hosts=known_hosts, forward_agent=forward_agent)
    if timeout is not None:
        options = dataclasses.replace(options, connect_timeout=timeout)
    return Ssh(options)
