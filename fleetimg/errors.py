"""Typed errors. Core raises these; only the CLI turns them into output and exit codes."""

from __future__ import annotations


class FleetimgError(Exception):
    """Base error: a message for a person plus a hint, the command or step that fixes it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(FleetimgError):
    """Bad input from the user: an option, a selection, a value. Exit code 2."""

    exit_code = 2


class InventoryError(UsageError):
    """fleet.toml cannot be loaded or is invalid."""


class ConnectionFailed(FleetimgError):
    """A node could not be reached over SSH, or refused us."""


class HostKeyChanged(ConnectionFailed):
    """The node's SSH host key differs from the one fleetimg recorded."""


class CommandError(FleetimgError):
    """An external program failed. Carries the command, exit code and the tail of stderr."""

    def __init__(
        self,
        argv: list[str],
        returncode: int,
        stderr: str = "",
        hint: str | None = None,
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-3:] if stderr.strip() else []
        detail = f": {' / '.join(tail)}" if tail else ""
        super().__init__(f"{argv[0]} exited with code {returncode}{detail}", hint)


class ToolMissing(FleetimgError):
    """A program fleetimg needs is not installed on this machine."""


class BuildError(FleetimgError):
    """An image build failed."""


class PushError(FleetimgError):
    """Delivering an image to a node failed."""


class DiskError(FleetimgError):
    """A disk, disk image or SD card cannot be used as asked."""


class LabError(FleetimgError):
    """The local lab fleet cannot be brought up or down."""


class DriveRefused(DiskError):
    """Writing to this target is refused for the user's safety. Exit code 2."""

    exit_code = 2


class ClonedImage(DiskError):
    """The SD card image comes from a board that has booted. Exit code 2."""

    exit_code = 2


class RunError(FleetimgError):
    """A workload could not be started or did not finish on a node."""
