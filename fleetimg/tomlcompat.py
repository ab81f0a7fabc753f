"""TOML parsing on every supported Python: tomllib from 3.11, the tomli backport on 3.10."""

from __future__ import annotations

import json
import sys

if sys.version_info >= (3, 11):
    from tomllib import TOMLDecodeError, loads
else:  # pragma: no cover
    from tomli import TOMLDecodeError, loads  # type: ignore[import-not-found, unused-ignore]

__all__ = ["TOMLDecodeError", "loads", "string"]


def string(value: object) -> str:
    """A TOML basic string for a value fleetimg writes into a file it generates: JSON's
    escapes (quote, backslash, control characters as \\uXXXX) are TOML's too."""
    return json.dumps(str(value), ensure_ascii=False)
