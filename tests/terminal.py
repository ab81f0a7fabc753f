"""Start a command as a terminal's foreground job would, whatever started the test run.

A script's background job (`pytest ... &`, nohup, a CI runner) starts with SIGINT ignored,
and exec keeps an ignored signal ignored; fleetimg keeps it so too (fleetimg/stop.py). A
test that sends Ctrl-C must therefore give its process the dispositions a terminal gives,
not inherit the run's.
"""

from __future__ import annotations

from collections.abc import Sequence

# coreutils env (>= 8.31) resets signal dispositions before it execs: no preexec_fn, which
# is unsafe in a process that has threads.
_DEFAULTS = ["env", "--default-signal=INT,HUP,TERM"]
_IGNORED = ["env", "--ignore-signal=INT,HUP"]


def from_terminal(argv: Sequence[str]) -> list[str]:
    """argv with SIGINT, SIGHUP and SIGTERM at their defaults, as a terminal starts it."""
    return [*_DEFAULTS, *argv]


def in_background(argv: Sequence[str]) -> list[str]:
    """argv as `nohup cmd &` from a script starts it: SIGINT and SIGHUP ignored."""
    return [*_IGNORED, *argv]
