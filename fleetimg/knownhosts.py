"""fleetimg's known_hosts: the keys it trusts per address, kept through moves and resets.

When apply moves a board, the key it verified at the old address is pinned for the new
one before connecting there, so whatever answers at the new address must be that board.
When apply makes a board new host keys, it reads them over the verified connection and
pins them, so the next connection neither fails ("host key changed") nor trusts blindly.
"""

from __future__ import annotations

from pathlib import Path

from fleetimg import run as runmod


def host_pattern(address: str, port: int = 22) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def keys_for(known_hosts: Path, address: str, port: int = 22) -> list[str]:
    """"TYPE KEY" of every key recorded for the address (hashed entries included)."""
    if not known_hosts.exists():
        return []
    found = runmod.run(["ssh-keygen", "-F", host_pattern(address, port), "-f",
                        str(known_hosts)], check=False).stdout
    keys = []
    for line in found.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#"):
            keys.append(f"{fields[1]} {fields[2]}")
    return keys


def pin(known_hosts: Path, address: str, keys: list[str], port: int = 22) -> None:
    """Trust exactly `keys` ("TYPE KEY [comment]") for the address from now on."""
    pattern = host_pattern(address, port)
    if known_hosts.exists():
        runmod.run(["ssh-keygen", "-q", "-R", pattern, "-f", str(known_hosts)], check=False)
        known_hosts.with_name(known_hosts.name + ".old").unlink(missing_ok=True)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with known_hosts.open("a") as fh:
        for key in keys:
            kind, blob = key.split()[:2]
            fh.write(f"{pattern} {kind} {blob}\n")
