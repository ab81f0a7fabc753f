"""fleetimg's known_hosts: the keys it trusts per address, kept through moves and resets.

When apply moves a board, the key it verified at the old address is pinned for the new
one before connecting there, so whatever answers at the new address must be that board.
When apply makes a board new host keys, it reads them over the verified connection and
pins them, so the next connection neither fails ("host key changed") nor trusts blindly.
"""

from __future__ import annotations

from pathlib import Path

from fleetimg import programs


def host_pattern(address: str, port: int = 22) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def entries(known_hosts: Path, address: str, port: int = 22) -> list[str]:
    """The known_hosts lines for the address, as recorded (hashed entries included)."""
    if not known_hosts.exists():
        return []
    found = programs.run(["ssh-keygen", "-F", host_pattern(address, port), "-f",
                        str(known_hosts)], check=False).stdout
    return [ln for ln in found.splitlines() if ln.strip() and not ln.startswith("#")]


def keys_for(known_hosts: Path, address: str, port: int = 22) -> list[str]:
    """"TYPE KEY" of every key recorded for the address."""
    return [" ".join(line.split()[1:3]) for line in entries(known_hosts, address, port)
            if len(line.split()) >= 3]


def forget(known_hosts: Path, address: str, port: int = 22) -> None:
    """Trust no key for the address any more (a re-flashed board makes new ones)."""
    if known_hosts.exists():
        programs.run(["ssh-keygen", "-q", "-R", host_pattern(address, port), "-f",
                    str(known_hosts)], check=False)
        known_hosts.with_name(known_hosts.name + ".old").unlink(missing_ok=True)


def pin(known_hosts: Path, address: str, keys: list[str], port: int = 22) -> None:
    """Trust exactly `keys` ("TYPE KEY [comment]") for the address from now on."""
    pattern = host_pattern(address, port)
    forget(known_hosts, address, port)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with known_hosts.open("a") as fh:
        for key in keys:
            kind, blob = key.split()[:2]
            fh.write(f"{pattern} {kind} {blob}\n")
