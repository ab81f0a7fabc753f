"""fleetimg.stop with real child processes: a stop ends what runs and starts nothing new."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetimg import programs, stop
from fleetimg.inventory import parse
from fleetimg.parallel import for_each_node
from tests.terminal import from_terminal, in_background


@pytest.fixture(autouse=True)
def fresh_stop() -> Iterator[None]:
    stop.reset()
    yield
    stop.reset()


def test_stop_ends_a_running_child_and_the_command_reports_interrupted() -> None:
    outcome: list[BaseException] = []

    def work() -> None:
        try:
            programs.run(["sleep", "30"])
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
        programs.run(["true"])
    with pytest.raises(stop.Interrupted):
        programs.spawn(["true"])
    with stop.cleanup():
        assert programs.run(["echo", "undo"]).stdout == "undo\n"
    assert stop.exit_code() == 130


def test_spawned_stream_is_ended_but_a_detached_service_is_not() -> None:
    stream = programs.spawn(["sleep", "30"])
    service = programs.spawn(["sleep", "30"], stdout=subprocess.DEVNULL, detach=True)
    try:
        stop.request()
        assert stream.wait(timeout=5) != 0
        assert service.poll() is None
    finally:
        service.kill()
        service.wait()


def test_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    stubborn = programs.spawn(["sh", "-c", "trap '' TERM; echo ready; sleep 30"])
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    stop.request()
    assert stubborn.wait(timeout=stop.KILL_GRACE_SECONDS + 5) == -signal.SIGKILL


def test_second_signal_exits_at_once() -> None:
    # A real process: the first SIGINT starts a stop whose cleanup hangs; the second ends it.
    script = (
        "import os, signal, sys, time\n"
        "from fleetimg import programs, stop\n"
        "stop.install()\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    programs.run(['sleep', '30'])\n"
        "except BaseException:\n"
        "    print('stopping', flush=True)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.Popen(from_terminal([sys.executable, "-c", script]),
                            stdout=subprocess.PIPE, text=True)
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
    outside = for_each_node(nodes, lambda n: programs.run(["true"]).returncode)
    assert all(isinstance(o.error, stop.Interrupted) for o in outside)
    with stop.cleanup():
        inside = for_each_node(nodes, lambda n: programs.run(["true"]).returncode)
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
    proc = subprocess.Popen(from_terminal([sys.executable, "-c", _WAITING_MAIN]),
                            stdout=subprocess.PIPE,
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
        programs.run(from_terminal(["sh", "-c", "kill -INT $$"]))
    assert stop.requested() and stop.exit_code() == 130
    # A child that exits with an error of its own is still its own failure.
    stop.reset()
    with pytest.raises(programs.CommandError):
        programs.run(["sh", "-c", "exit 3"])
    assert not stop.requested()


# fleetimg started one way or another, with one child that reports its pid and which signals
# it ignores; the test then signals fleetimg alone (not its group), so only fleetimg's stop
# can end the child.
_ONE_CHILD = """
import sys, time
from fleetimg import programs, stop

stop.install()
try:
    child = programs.spawn(["sh", "-c", "echo $$ $(grep ^SigIgn: /proc/self/status); exec sleep 30"])
    assert child.stdout is not None
    print(child.stdout.readline().decode().strip(), flush=True)
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    print("stopped by", stop.exit_code() - 128, flush=True)
sys.exit(stop.exit_code())
"""


def _ignored(mask_hex: str) -> set[int]:
    mask = int(mask_hex, 16)
    return {sig for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM) if mask >> (sig - 1) & 1}


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize(("launch", "signals", "child_ignores", "code"), [
    # A terminal's foreground job: Ctrl-C is the stop; the child takes SIGINT at its default.
    (from_terminal, [signal.SIGINT], set(), 130),
    # `nohup fleetimg ... &` from a script, cron, a CI runner: a Ctrl-C stays ignored, by
    # fleetimg and its child alike (the first signal below does nothing); SIGTERM stops it.
    (in_background, [signal.SIGINT, signal.SIGTERM], {signal.SIGINT, signal.SIGHUP}, 143),
    # Even an inherited SIGTERM ignore does not reach the child: a stop ends children with
    # SIGTERM, so they must take it.
    (lambda argv: ["env", "--ignore-signal=INT,HUP,TERM", *argv],
     [signal.SIGINT, signal.SIGTERM], {signal.SIGINT, signal.SIGHUP}, 143),
])
def test_a_stop_ends_the_children_however_fleetimg_was_started(
        launch: Callable[[list[str]], list[str]], signals: list[signal.Signals],
        child_ignores: set[int], code: int) -> None:
    proc = subprocess.Popen(launch([sys.executable, "-c", _ONE_CHILD]), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    pid, _, mask = proc.stdout.readline().split()
    assert _ignored(mask) == child_ignores
    for sig in signals:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    # One stop, by the last signal: a handled Ctrl-C followed by SIGTERM would have been a
    # second signal, which exits at once without this line.
    assert (proc.returncode, out) == (code, f"stopped by {signals[-1]}\n")
    # fleetimg exits without waiting for its SIGKILL timer: the SIGTERM it sent ended the child.
    deadline = time.monotonic() + 10
    while _running(int(pid)):
        assert time.monotonic() < deadline, "the child outlived the stop"
        time.sleep(0.02)


def test_the_stop_tests_pass_in_a_background_job_with_no_terminal() -> None:
    # As `nohup bash .ci/run < /dev/null > log 2>&1 &` runs them: SIGINT and SIGHUP
    # ignored, stdin /dev/null, no controlling terminal (a new session has none).
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        in_background([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "tests/unit/test_stop.py", "-k", "not background_job"]),
        cwd=root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
