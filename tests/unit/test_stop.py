"""fleetimg.stop with real child processes: a stop ends what runs and starts nothing new."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetimg import run as runmod
from fleetimg import stop
from fleetimg.inventory import parse
from fleetimg.parallel import for_each_node


@pytest.fixture(autouse=True)
def fresh_stop() -> Iterator[None]:
    stop.reset()
    yield
    stop.reset()


def test_stop_ends_a_running_child_and_the_command_reports_interrupted() -> None:
    outcome: list[BaseException] = []

    def work() -> None:
        try:
            runmod.run(["sleep", "30"])
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 10
    while not list(stop._children) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    stop.request(signal.SIGTERM)
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 3
    # The killed child is not reported as the command's own failure.
    assert len(outcome) == 1 and isinstance(outcome[0], stop.Interrupted)
    assert stop.exit_code() == 143


def test_nothing_new_starts_after_a_stop_except_cleanup() -> None:
    stop.request(signal.SIGINT)
    with pytest.raises(stop.Interrupted):
        runmod.run(["true"])
    with pytest.raises(stop.Interrupted):
        runmod.spawn(["true"])
    with stop.cleanup():
        assert runmod.run(["echo", "undo"]).stdout == "undo\n"
    assert stop.exit_code() == 130


def test_spawned_stream_is_ended_but_a_detached_service_is_not() -> None:
    stream = runmod.spawn(["sleep", "30"])
    service = runmod.spawn(["sleep", "30"], stdout=subprocess.DEVNULL, detach=True)
    try:
        stop.request()
        assert stream.wait(timeout=5) != 0
        assert service.poll() is None
    finally:
        service.kill()
        service.wait()


def test_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    stubborn = runmod.spawn(["sh", "-c", "trap '' TERM; echo ready; sleep 30"])
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    stop.request()
    assert stubborn.wait(timeout=stop.KILL_GRACE_SECONDS + 5) == -signal.SIGKILL


def test_second_signal_exits_at_once() -> None:
    # A real process: the first SIGINT starts a stop whose cleanup hangs; the second ends it.
    script = (
        "import os, signal, sys, time\n"
        "from fleetimg import stop, run\n"
        "stop.install()\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    run.run(['sleep', '30'])\n"
        "except BaseException:\n"
        "    print('stopping', flush=True)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "stopping\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 130


def test_workers_started_inside_cleanup_may_still_run_commands() -> None:
    # `run --stop` after a Ctrl-C removes containers on every node from worker threads:
    # they inherit the cleanup of the thread that started them, others do not.
    nodes = parse({"fleet": {"subnet": "10.0.0.0/24"}, "nodes": [
        {"name": f"node{i}", "address": f"10.0.0.{i}", "module": "nano-4gb"} for i in (1, 2)]},
        base_dir=Path("/tmp")).nodes
    stop.request()
    outside = for_each_node(nodes, lambda n: runmod.run(["true"]).returncode)
    assert all(isinstance(o.error, stop.Interrupted) for o in outside)
    with stop.cleanup():
        inside = for_each_node(nodes, lambda n: runmod.run(["true"]).returncode)
    assert [o.value for o in inside] == [0, 0]


# A main thread waiting on workers that run commands, as in a push; Ctrl-C in a terminal
# signals the whole process group. The workers must end by seeing the stop.
_WAITING_MAIN = """
import subprocess, sys, time
from pathlib import Path
from fleetimg import stop
from fleetimg.inventory import parse
from fleetimg.parallel import for_each_node

stop.install()
nodes = parse({"fleet": {"subnet": "10.0.0.0/24"}, "nodes": [
    {"name": f"node{i}", "address": f"10.0.0.{i}", "module": "nano-4gb"} for i in (1, 2, 3)]},
    base_dir=Path("/tmp")).nodes

def say(line):
    sys.stdout.write(line + chr(10))  # one write per line: the threads' lines never mix
    sys.stdout.flush()

def busy(node):
    end = time.monotonic() + 20
    say("ready")
    while time.monotonic() < end:
        if stop.requested():
            say(f"{node.name} saw the stop")
            return
        # Children come and go, as a push's ssh and zstd do (plain subprocess: fleetimg's
        # own runner would notice the signal from the child's death).
        subprocess.run(["sh", "-c", "head -c 20000000 /dev/zero >/dev/null"])
    say(f"{node.name} ran out its time")

try:
    for_each_node(nodes, busy)
except KeyboardInterrupt:
    say("interrupted")
"""


@pytest.mark.parametrize("attempt", range(5))
def test_a_signal_reaches_a_main_thread_that_waits_on_workers(attempt: int) -> None:
    # CPython runs signal handlers in the main thread only; when the kernel hands the signal
    # to a busy worker, a main thread blocked without a timeout never woke for it, and the
    # workers ran on (a push's re-feed even started). The main thread now waits in slices.
    proc = subprocess.Popen([sys.executable, "-c", _WAITING_MAIN], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    for _ in range(3):
        assert proc.stdout.readline() == "ready\n"
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert "ran out" not in out
    assert sorted(out.split("\n")[:-2]) == [f"node{i} saw the stop" for i in (1, 2, 3)]
    assert out.endswith("interrupted\n")


def test_a_child_killed_by_the_terminals_ctrl_c_is_a_stop() -> None:
    # Ctrl-C signals the whole process group: a worker can see its child die of SIGINT
    # before fleetimg's own handler has run. That is the stop, not the node's failure.
    with pytest.raises(stop.Interrupted):
        runmod.run(["sh", "-c", "kill -INT $$"])
    assert stop.requested() and stop.exit_code() == 130
    # A child that exits with an error of its own is still its own failure.
    stop.reset()
    with pytest.raises(runmod.CommandError):
        runmod.run(["sh", "-c", "exit 3"])
    assert not stop.requested()
