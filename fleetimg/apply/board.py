"""The board writer: installs a plan's files on a running board over SSH, as root.

One SSH command per step: the shell functions of data/apply-write.sh, the new files as a
base64 tar (modes and owners inside it), and the steps, every argument quoted by
`remote.sh`. Files replace the old ones by a rename, so a board never holds half a file.
"""

from __future__ import annotations

import base64
import io
import tarfile
import time
from collections.abc import Sequence
from importlib import resources

from fleetimg.apply.snapshot import need_sudo
from fleetimg.errors import CommandError, UsageError
from fleetimg.inventory import Node
from fleetimg.nodestate.spec import ChangeSet, FileSpec, check_path
from fleetimg.remote import sh
from fleetimg.ssh import Ssh


def _functions() -> str:
    return resources.files("fleetimg").joinpath("data/apply-write.sh").read_text()


def _payload(files: Sequence[FileSpec]) -> str:
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in files:
            info = tarfile.TarInfo(check_path(f.path).lstrip("/"))
            info.size, info.mode, info.uid, info.gid = len(f.content), f.mode, f.uid, f.gid
            info.mtime = int(now)  # `cp -p` on the board keeps it: the time of the change
            tar.addfile(info, io.BytesIO(f.content))
    return base64.encodebytes(buf.getvalue()).decode()


def write_steps(writes: ChangeSet) -> list[str]:
    """The shell steps that install `writes`: directories, files, links, then removals."""
    steps = [sh("put_dir", f"{d.mode:o}", d.uid, d.gid, check_path(d.path))
             for d in sorted(writes.dirs, key=lambda d: d.path.count("/"))]
    steps += [sh("put_file", check_path(f.path)) for f in writes.files]
    for s in writes.symlinks:
        if not s.target or "\n" in s.target or "\0" in s.target:
            raise UsageError(f"refusing symlink target {s.target!r}")
        steps.append(sh("put_link", s.target, check_path(s.path)))
    steps += [sh("drop", check_path(r)) for r in writes.remove]
    return steps


def run_steps(ssh: Ssh, node: Node, steps: Sequence[str], files: Sequence[FileSpec] = (),
              *, timeout: float = 300) -> str:
    """Run writer steps on the node as root; returns their output."""
    script = _functions()
    if files:
        script += "unpack <<'FLEETIMG_PAYLOAD'\n" + _payload(files) + "FLEETIMG_PAYLOAD\n"
    script += "\n".join(steps) + "\n"
    try:
        return ssh.run(node, "sudo -n sh -s", input=script, timeout=timeout).stdout
    except CommandError as exc:
        raise need_sudo(node, exc) from exc
