"""Command lines for a node's shell, run over ssh: every argument is quoted here, once.

Core code builds remote commands with `sh()` instead of formatting strings case by case
(the idea of pyinfra's StringCommand): an image name, a registry endpoint or a user name
can hold anything the shell would interpret, and an unquoted one is a bug waiting for it.
Shell syntax (pipes, `&&`, redirections) is joined around the quoted pieces by the caller.
"""

from __future__ import annotations

import shlex

# The template syntax Docker's --format takes, as one argument.
ID_FORMAT = "{{.Id}}"


def sh(*argv: object) -> str:
    """One simple command, every argument quoted for a POSIX shell."""
    return shlex.join(str(a) for a in argv)


def docker(prefix: str, *args: object) -> str:
    """A docker command on a node; `prefix` is how pre-flight found Docker answers there
    ("docker" or "sudo -n docker", fleetimg's own words, never user input)."""
    return sh(*prefix.split(), *args)
