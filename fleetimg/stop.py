"""Stopping: Ctrl-C and SIGTERM end a command within seconds, whatever thread does the work.

Python delivers a signal to the main thread only, while pushes and card writes run in
thread-pool workers that the pool then waits for. So the first signal sets one process-wide
flag and ends every child process fleetimg started (docker save, zstd, ssh, debugfs); the
workers see their pipes close, and every external command or write loop checks the flag
before going on, so nothing is re-fed, tagged or renamed after a stop. Only work marked as
cleanup (removing a temporary tag, a `.part` file) still runs, with short timeouts. A second
signal kills what is left and exits at once.

The main thread must never wait without a timeout (use as_completed()): CPython runs a Python signal
handler in the main thread only, and when the kernel hands the signal to a worker thread,
a main thread blocked on a lock does not wake for it. Measured: Ctrl-C then took as long
as the workers' current step (9 to 20 s in a push, whose re-feed it even let start). And a
Ctrl-C in the terminal signals fleetimg's children too, so a worker can see its child die
before the handler has run: child_ended() treats that as the stop it is.

Started in the background (a script's `cmd &`, nohup, a CI runner), fleetimg inherits
SIGINT or SIGHUP ignored; it keeps them ignored, as POSIX shells and Python itself do, so a
Ctrl-C meant for the terminal's foreground job or a hang-up does not stop it. SIGTERM is
always handled: it is how CI runners and systemd stop a command, and handling it is what
gives every child SIGTERM at its default (exec resets a handled signal, never an ignored
one), so the SIGTERM a stop sends them ends them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import weakref
from collections.abc import Iterable, Iterator
from concurrent import futures
from types import FrameType
from typing import TypeVar

from fleetimg.errors import FleetimgError

# Children get this long after SIGTERM before SIGKILL: enough for ssh to close its channel.
KILL_GRACE_SECONDS = 1.5

# How often a waiting main thread wakes to let a pending signal handler run.
POLL_SECONDS = 0.2

T = TypeVar("T")

_requested = threading.Event()
_signum = 0
_signals_handled = 0
_children: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()
_lock = threading.Lock()
_local = threading.local()
_unfinished: list[str] = []

# Ctrl-C, a hang-up of the terminal, kill / systemd / a CI runner's cancel.
STOP_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)
# The stop signals this process handles; before install() (an in-process caller such as a
# test), a child's death by any of them is the stop.
_handled: set[int] = set(STOP_SIGNALS)


class Interrupted(FleetimgError):
    """The user stopped fleetimg (Ctrl-C, SIGTERM); raised where work would otherwise go on."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted")


def requested() -> bool:
    return _requested.is_set()


def exit_code() -> int:
    """128 + the signal, as a shell reports it: 130 for SIGINT, 129 SIGHUP, 143 SIGTERM."""
    return 128 + (_signum or signal.SIGINT)


def check() -> None:
    """Raise Interrupted once a stop was requested, except inside cleanup()."""
    if _requested.is_set() and not cleaning_up():
        raise Interrupted()


@contextlib.contextmanager
def cleanup() -> Iterator[None]:
    """Work that must still run after a stop (undoing a half-done step) in this thread."""
    before = cleaning_up()
    _local.cleanup = True
    try:
        yield
    finally:
        _local.cleanup = before


def cleaning_up() -> bool:
    """Whether this thread runs inside cleanup(): workers it starts must run there too."""
    return bool(getattr(_local, "cleanup", False))


def track(proc: subprocess.Popen[bytes]) -> None:
    """Register a child so a stop ends it; one started after the stop is ended at once.

    Kept weakly: a finished child the caller dropped needs no untracking.
    """
    with _lock:
        _children.add(proc)
        late = _requested.is_set() and not cleaning_up()
    if late:
        _end(proc, signal.SIGTERM)


def note_unfinished(text: str) -> None:
    """Something a stop left half-done that the user must know about (a partly written card)."""
    with _lock:
        _unfinished.append(text)


def unfinished() -> list[str]:
    with _lock:
        return list(_unfinished)


def _end(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(OSError):
        if proc.poll() is None:
            proc.send_signal(sig)


def request(signum: int = signal.SIGINT) -> None:
    """Stop: set the flag and end every tracked child (SIGTERM, then SIGKILL after a grace)."""
    global _signum
    with _lock:
        first = not _requested.is_set()
        if first:
            _signum = signum
            _requested.set()
        children = list(_children)
    for proc in children:
        _end(proc, signal.SIGTERM)
    if first:
        timer = threading.Timer(KILL_GRACE_SECONDS, _kill_all)
        timer.daemon = True
        timer.start()


def child_ended(returncode: int | None) -> None:
    """Stop if a child died of a stop signal: fleetimg only ends children that way in a
    stop, so the signal came to the whole process group (Ctrl-C in the terminal, a kill of
    the group, a hang-up) and may have reached the child before fleetimg's own handler ran.
    A signal fleetimg ignores cannot be this stop: the child inherited it ignored, unless
    it set its own disposition, and then its death is its own failure."""
    if returncode is not None and -returncode in _handled:
        request(-returncode)


def as_completed(pending: Iterable[futures.Future[T]]) -> Iterator[futures.Future[T]]:
    """concurrent.futures.as_completed for the main thread: it wakes every POLL_SECONDS, so
    that a signal handler runs on time (see the module docstring)."""
    rest = set(pending)
    while rest:
        done, rest = futures.wait(rest, timeout=POLL_SECONDS,
                                  return_when=futures.FIRST_COMPLETED)
        yield from done


def _kill_all() -> None:
    with _lock:
        children = list(_children)
    for proc in children:
        _end(proc, signal.SIGKILL)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _signals_handled
    if _signals_handled:
        # The second Ctrl-C: the user does not want to wait for cleanup. (Counted here, not
        # by the flag: a worker may have set it from a child's death, for this same signal.)
        _kill_all()
        os._exit(128 + signum)
    _signals_handled += 1
    request(signum)
    raise KeyboardInterrupt


def install() -> None:
    """Route the stop signals here; call once, from the main thread.

    SIGINT and SIGHUP stay ignored when fleetimg started with them ignored (see the module
    docstring); SIGTERM is handled whatever it inherited.
    """
    _handled.clear()
    for sig in STOP_SIGNALS:
        if sig != signal.SIGTERM and signal.getsignal(sig) == signal.SIG_IGN:
            continue
        signal.signal(sig, _handler)
        _handled.add(sig)


def reset() -> None:
    """Forget a stop (tests that request one in-process)."""
    global _signum, _signals_handled
    with _lock:
        _requested.clear()
        _signum = 0
        _signals_handled = 0
        _unfinished.clear()
