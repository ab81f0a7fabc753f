"""SSH key pairs fleetimg makes for machines: the fleet-internal key, lab keys, a run's key.

Their private halves are secrets: written like every secret file (fleetimg.newfile), 0600
and under sudo the invoking user's.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from fleetimg import newfile, programs


def keypair(comment: str) -> tuple[bytes, bytes]:
    """A new ed25519 key pair without passphrase (machines use it), in memory:
    (private key, public key line)."""
    # The comment ends up in authorized_keys files: nothing in it may end the line or
    # start an option (a fleet name is validated too; this holds whatever the caller).
    comment = re.sub(r"[^A-Za-z0-9._@-]", "_", comment)
    with tempfile.TemporaryDirectory(prefix="fleetimg-key-") as tmp:
        key = Path(tmp) / "key"
        programs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(key)])
        return key.read_bytes(), key.with_name("key.pub").read_bytes()


def new_keypair(path: Path, comment: str) -> None:
    """A key pair at `path` and `path.pub`, unless it exists: the private half 0600 and,
    like the public half, the invoking user's."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    private_key, public_key = keypair(comment)
    newfile.write_atomic(path, private_key, private=True)
    newfile.write_atomic(path.with_name(path.name + ".pub"), public_key)
