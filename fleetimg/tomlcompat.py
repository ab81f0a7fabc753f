"""TOML parsing on every supported Python: tomllib from 3.11, the tomli backport on 3.10."""

from __future__ import annotations

import json
import sys

if sys.version_info >= (3, 11):
    from tomllib import TOMLDecodeError, loads
else:  # pragma: no cover
    from tomli import TOMLDecodeError, loads  # type: ignore[import-not-found, unused-ignore]

__all__ = ["TOMLDecodeError", "assign", "loads", "string", "value"]


def string(value: object) -> str:
    """A TOML basic string for a value fleetimg writes into a file it generates: JSON's
    escapes (quote, backslash, control characters as \\uXXXX) are TOML's too."""
    return json.dumps(str(value), ensure_ascii=False)


def value(v: object) -> str:
    """A TOML value for what fleetimg writes: booleans, integers, lists, else a string."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return string(v)


def assign(key: str, v: object, comment: str = "") -> str:
    """One `key = value` line, escaped, with an optional trailing comment: the one way
    fleetimg writes TOML (`fleetimg init`, `fleetimg lab up`), comments kept."""
    return f"{key} = {value(v)}" + (f"  # {comment}" if comment else "")
