"""Sizes for people: one unit system everywhere (SI: 1 MB = 1,000,000 bytes, as disk and
card makers print them), so probe, push and sdcard agree on the same disk."""

from __future__ import annotations


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
