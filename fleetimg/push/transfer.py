"""Send one image to one node over SSH: docker save -> filter -> compress -> ssh -> load.

Nothing is written to disk on either side. The node loads under a temporary name; only
after its image ID matches the workstation's is the real name moved onto it, so a failed or
interrupted transfer never leaves the real tag on a partial or wrong image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import IO

from fleetimg import programs, remote, stop
from fleetimg.errors import FleetimgError, PushError
from fleetimg.inventory import Runtime
from fleetimg.localimage import LocalImage
from fleetimg.push.archive import filter_save_stream, skipped_members
from fleetimg.push.layerstore import open_store, write_archive
from fleetimg.push.plan import (
    K3S_IMPORT,
    K3S_LIST,
    Action,
    CodecName,
    NodePlan,
    containerd_has,
    containerd_name,
    k3s_pin,
)
from fleetimg.ssh import Ssh
from fleetimg.units import human_bytes

log = logging.getLogger("fleetimg.push")
CHUNK = 1 << 20
# Removing a temporary name after a failure or a stop must not keep the user waiting.
CLEANUP_TIMEOUT = 5

Progress = Callable[[int], None]  # uncompressed bytes just handled


class ResultAction(str, Enum):
    """What a push did on a node."""

    SKIPPED = "skipped"  # it had the image under this name
    TAGGED = "tagged"  # it had the image; the name was added
    LOADED = "loaded"  # into Docker
    IMPORTED = "imported"  # into K3s's containerd
    PULLED = "pulled"  # from the workstation's registry (push --via registry)


class ImageSource(str, Enum):
    """Where the image's bytes were read on the workstation."""

    LAYER_STORE = "layer-store"  # the engine's layer files, read directly
    DOCKER_SAVE = "docker-save"  # `docker save`, where the layer store is out of reach


@dataclass(frozen=True, kw_only=True)
class NodeResult:
    node: str
    action: ResultAction
    sent_bytes: int  # through the workstation's uplink, compressed
    raw_bytes: int  # archive bytes before compression
    layers_sent: int
    seconds: float
    codec: CodecName | None = None
    via: str | None = None  # the node that relayed the stream; None: the workstation
    note: str = ""
    read_bytes: int = 0  # image bytes read from the local engine to make the stream
    source: ImageSource | None = None  # where they were read


# Each fleetimg process loads under its own temporary name: two pushes of one image at once
# must not take (and remove) each other's, which made one of them re-feed and report 0 B.
_RUN_TOKEN = f"{os.getpid():x}{secrets.token_hex(2)}"


def incoming_tag(image: LocalImage) -> str:
    return f"fleetimg-incoming:{image.id.removeprefix('sha256:')[:16]}-{_RUN_TOKEN}"


@dataclass(frozen=True, kw_only=True)
class StreamOutcome:
    sent: int  # compressed bytes written to ssh
    raw: int  # archive bytes before compression
    read: int  # image bytes read from the local engine
    source: ImageSource
    rc: int  # the remote command's exit status (255: ssh itself failed)
    broken: bool  # the connection went away while sending
    output: str  # the remote command's stdout and stderr
    failure: BaseException | None  # reading the local image failed


def stream(ssh: Ssh, plan: NodePlan, image: LocalImage, remote_cmd: str,
           *, skip_layers: int, repo_tag: str, progress: Progress | None,
           relayed: Callable[[str], Progress | None] | None = None) -> StreamOutcome:
    """Send the filtered, compressed archive into `remote_cmd` on the plan's node.
    `relayed(name)` gives the progress of a node the relays below feed."""
    with tempfile.TemporaryFile() as remote_out:
        sent, raw, read, source, rc, broken, failure = _pipeline(
            ssh, plan, image, remote_cmd, remote_out, skip_layers=skip_layers,
            repo_tag=repo_tag, progress=progress, relayed=relayed)
        remote_out.seek(0)
        output = "\n".join(ln for ln in remote_out.read().decode(errors="replace").splitlines()
                           if not (ln.startswith("fleetimg-relay: ")
                                   and (" waiting on " in ln or _RECEIVED_RE.match(ln))))
    return StreamOutcome(sent=sent, raw=raw, read=read, source=source, rc=rc, broken=broken,
                         output=output, failure=failure)


def _stream(ssh: Ssh, plan: NodePlan, image: LocalImage, remote_cmd: str,
            *, skip_layers: int, repo_tag: str, progress: Progress | None) -> StreamOutcome:
    """Run the pipeline; a failure of the node or of reading the image raises."""
    out = stream(ssh, plan, image, remote_cmd, skip_layers=skip_layers, repo_tag=repo_tag,
                 progress=progress)
    stop.check()  # the pipeline was ended by a stop, not by the node
    if out.rc != 0 or out.broken:
        tail = " / ".join(out.output.strip().splitlines()[-2:]) or "connection lost"
        raise PushError(f"{plan.node.name}: transfer failed after {human_bytes(out.sent)} ({tail})",
                        hint="run again: only what is still missing is sent")
    if out.failure is not None:
        raise PushError(f"{plan.node.name}: reading the local image failed: {out.failure}")
    return out


def _pipeline(ssh: Ssh, plan: NodePlan, image: LocalImage, remote_cmd: str,
              remote_out: IO[bytes], *, skip_layers: int, repo_tag: str,
              progress: Progress | None,
              relayed: Callable[[str], Progress | None] | None = None) -> \
        tuple[int, int, int, ImageSource, int, bool, BaseException | None]:
    assert plan.codec is not None
    handled = [0]  # uncompressed bytes into the compressor: relayed nodes are scaled by it

    def counted(n: int) -> None:
        handled[0] += n
        if progress is not None:
            progress(n)

    produce, save = archive_source(image, skip_layers, repo_tag, counted)
    comp = programs.spawn(list(plan.codec.compress), stdin=subprocess.PIPE, stderr=None)
    remote = ssh.spawn(plan.node, remote_cmd, stdin=subprocess.PIPE, stdout=remote_out,
                       stderr=remote_out)
    comp_in, comp_out, remote_in = comp.stdin, comp.stdout, remote.stdin
    assert comp_in and comp_out and remote_in
    raw = read = 0
    failure: list[BaseException] = []

    def feed() -> None:
        nonlocal raw, read
        try:
            raw, read = produce(comp_in)
        except (BrokenPipeError, ConnectionError):
            pass  # the far end went away: reported by the pump
        except Exception as exc:
            failure.append(exc)
        finally:
            with contextlib.suppress(OSError):
                comp_in.close()

    feeder = threading.Thread(target=feed, daemon=True, name=f"feed-{plan.node.name}")
    feeder.start()
    sent, broken, rc = 0, False, -1
    # A relay reports the compressed bytes each node below has received; scaled by this
    # stream's ratio of uncompressed to compressed bytes, they are that node's progress in
    # the units of the node fed from here.
    watch = _StallWatch(remote, plan.node.name, remote_out, relayed,
                        lambda: handled[0] / sent if sent else 0.0)
    try:
        while chunk := comp_out.read(CHUNK):
            try:
                with watch.writing():
                    remote_in.write(chunk)
            except OSError:
                broken = True
                break
            sent += len(chunk)
        try:
            remote_in.close()
        except OSError:
            broken = True
        rc = remote.wait()
    finally:
        watch.close()
        for proc in (p for p in (save, comp, remote) if p is not None):
            if proc.poll() is None:
                proc.kill()
            stop.child_ended(proc.wait())
        # After a stop the feeder is abandoned quickly: it only reads local files.
        feeder.join(timeout=2 if stop.requested() else 30)
    if watch.stalled:
        remote_out.seek(0, os.SEEK_END)  # ssh wrote through its own descriptor
        remote_out.write(f"\nfleetimg-relay: {plan.node.name} cut off by the workstation: "
                         f"took nothing for {STALL_SECONDS} s\n".encode())
    source = ImageSource.DOCKER_SAVE if save is not None else ImageSource.LAYER_STORE
    return sent, raw, read, source, rc, broken, failure[0] if failure else None


# relay.sh's progress line: the compressed bytes a node has received so far.
_RECEIVED_RE = re.compile(r"^fleetimg-relay: (\S+) received (\d+)$")
# A node that takes no byte for this long is cut off (hung, frozen or paused, or its
# `docker load` stopped); relay.sh applies the same rule to each hop below.
STALL_SECONDS = 8
# A relay that reports waiting on a node below it is dealing with that stall itself.
_TALKING = 3.0


class _StallWatch:
    """Ends the ssh to a node whose stream write has not returned for STALL_SECONDS: a node
    that stays alive but stops reading would otherwise hold the push until TCP gives up.
    A relay that keeps printing (relay.sh says every second which hop it waits on) is left
    to cut off the hop below it. It also reads the relays' progress lines as they come."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, output: IO[bytes],
                 relayed: Callable[[str], Progress | None] | None = None,
                 ratio: Callable[[], float] = lambda: 0.0) -> None:
        self.proc, self.name, self.output = proc, name, output
        self.since: float | None = None
        self.stalled = False
        self._relayed, self._ratio = relayed, ratio
        self._bars: dict[str, Progress | None] = {}
        self._shown: dict[str, int] = {}
        self._offset = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"stall-{name}")
        self._thread.start()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None

    def _run(self) -> None:
        size, heard = -1, time.monotonic()
        while not self._done.wait(0.5):
            now = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                grown = os.fstat(self.output.fileno()).st_size
                if grown != size:
                    size, heard = grown, now
                    self._read_progress(grown)
            since = self.since
            if since is not None and now - since > STALL_SECONDS and now - heard > _TALKING:
                log.info("%s took nothing for %d s: cutting it off", self.name, STALL_SECONDS)
                self.stalled = True
                self.proc.kill()
                return

    def _read_progress(self, size: int) -> None:
        if self._relayed is None or size <= self._offset:
            return
        data = os.pread(self.output.fileno(), size - self._offset, self._offset)
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            m = _RECEIVED_RE.match(line)
            if m is None or m.group(1) == self.name:
                continue  # this stream's own node counts what is sent from here
            name = m.group(1)
            if name not in self._bars:
                self._bars[name] = self._relayed(name)
            bar = self._bars[name]
            shown = int(int(m.group(2)) * self._ratio())
            if bar is not None and shown > self._shown.get(name, 0):
                bar(shown - self._shown.get(name, 0))
                self._shown[name] = shown

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def archive_source(image: LocalImage, skip_layers: int, repo_tag: str,
                   progress: Progress | None) -> \
        tuple[Callable[[IO[bytes]], tuple[int, int]], subprocess.Popen[bytes] | None]:
    """What writes the node's archive, returning (archive bytes, image bytes read): the
    engine's layer store (only the missing layers are read) where this process can read
    it, else `docker save` filtered on the fly (the whole image is read).
    FLEETIMG_PUSH_SOURCE=save forces the latter."""
    store = None if os.environ.get("FLEETIMG_PUSH_SOURCE") == "save" else open_store()
    if store is not None and store.holds(image.id, image.diff_ids):
        def from_store(dst: IO[bytes]) -> tuple[int, int]:
            return write_archive(store, image.id, image.diff_ids, skip_layers, repo_tag, dst,
                                 progress)
        return from_store, None
    skip = skipped_members(image.id, image.diff_ids, skip_layers)
    save = programs.spawn(["docker", "save", image.id], stderr=subprocess.DEVNULL)
    assert save.stdout is not None
    src = _Counting(save.stdout)

    def from_save(dst: IO[bytes]) -> tuple[int, int]:
        written = filter_save_stream(src, dst, skip=skip, repo_tag=repo_tag,  # type: ignore[arg-type]
                                     diff_ids=image.diff_ids, progress=progress)
        return written, src.count
    return from_save, save


class _Counting:
    """A read-only stream that counts what is read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.count = raw, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data


def load_command(plan: NodePlan) -> str:
    """What the node runs on the decompressed-on-arrival stream."""
    assert plan.codec is not None
    if plan.node.runtime is Runtime.K3S:
        return f"{plan.codec.decompress} | {K3S_IMPORT}"
    return f"{plan.codec.decompress} | {remote.docker(plan.docker, 'load', '-q')}"


def stream_tag(plan: NodePlan, image: LocalImage) -> str:
    """The name the archive carries: k3s imports under the real name (containerd has no
    atomic retag), Docker loads under a temporary one."""
    return image.ref if plan.node.runtime is Runtime.K3S else incoming_tag(image)


def drop_incoming(ssh: Ssh, plan: NodePlan, image: LocalImage) -> None:
    """Remove the temporary name from a Docker node, even after a stop, within seconds; the
    node may be gone, and a leftover temporary name is harmless (never the real tag)."""
    with contextlib.suppress(FleetimgError), stop.cleanup():
        rmi = remote.docker(plan.docker, "rmi", incoming_tag(image))
        ssh.run(plan.node, f"{rmi} >/dev/null 2>&1 || true",
                timeout=CLEANUP_TIMEOUT, check=False)


def finish(ssh: Ssh, plan: NodePlan, image: LocalImage) -> None:
    """After a stream: check the node really has the image, then give it its name.

    Raises PushError when the image is not there (the temporary name is removed).
    """
    node = plan.node
    if node.runtime is Runtime.K3S:
        listing = ssh.run(node, K3S_LIST, timeout=60).stdout
        if not containerd_has(listing, image.ref, image.id):
            raise PushError(f"{node.name}: containerd does not list {image.ref} after import")
        ssh.run(node, k3s_pin(containerd_name(image.ref)), timeout=60)
        return
    d = plan.docker
    temp = incoming_tag(image)
    try:
        got = ssh.run(node, remote.docker(d, "image", "inspect", "--format",
                                          remote.ID_FORMAT, temp),
                      timeout=60, check=False).stdout.strip()
        if got != image.id:
            raise PushError(f"{node.name}: loaded image ID {got or 'missing'} differs from "
                            f"{image.id}", hint="run again; if it persists, check the node's "
                            "disk and Docker log")
        ssh.run(node, f"{remote.docker(d, 'tag', temp, image.ref)} && "
                f"{remote.docker(d, 'rmi', temp)} >/dev/null", timeout=60)
    except FleetimgError:
        drop_incoming(ssh, plan, image)
        raise


def push_node(ssh: Ssh, plan: NodePlan, image: LocalImage,
              progress: Progress | None = None) -> NodeResult:
    start = time.monotonic()
    node = plan.node
    if plan.action is Action.REFUSE:
        raise PushError(f"{node.name}: refused: {plan.reason}")
    if plan.action is Action.SKIP:
        return NodeResult(node=node.name, action=ResultAction.SKIPPED, sent_bytes=0, raw_bytes=0,
                          layers_sent=0, seconds=time.monotonic() - start)
    if plan.action is Action.TAG:
        ssh.run(node, remote.docker(plan.docker, "tag", image.id, image.ref), timeout=60)
        return NodeResult(node=node.name, action=ResultAction.TAGGED, sent_bytes=0, raw_bytes=0,
                          layers_sent=0, seconds=time.monotonic() - start)
    assert plan.codec is not None
    k3s = node.runtime is Runtime.K3S
    try:
        out = _stream(ssh, plan, image, load_command(plan), skip_layers=plan.have_layers,
                      repo_tag=stream_tag(plan, image), progress=progress)
    except FleetimgError:
        if not k3s:
            drop_incoming(ssh, plan, image)
        raise
    finish(ssh, plan, image)
    action = ResultAction.IMPORTED if k3s else ResultAction.LOADED
    return NodeResult(node=node.name, action=action,
                      sent_bytes=out.sent, raw_bytes=out.raw, layers_sent=plan.send_layers,
                      seconds=time.monotonic() - start, codec=plan.codec.name,
                      read_bytes=out.read, source=out.source)
