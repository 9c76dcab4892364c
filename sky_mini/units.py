"""Parsing and formatting of sizes and durations, shared by specs, config and output.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import re

from sky_mini.lazyre import lazy

_SIZE_RE = lazy(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_DURATION_RE = lazy(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: str | int | float) -> int:
    """Parse ``512M``, ``2G``, ``1.5GiB``, ``1024`` (bytes) into bytes. Units are binary.

    Raises ValueError with a message saying what is allowed.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 2G, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 512M or 2G, got {value!r}")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_duration(value: str | int | float) -> float:
    """Parse ``30``, ``30s``, ``5m``, ``2h``, ``1d`` into seconds (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 2h, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ValueError(f"expected a duration such as 30s, 5m or 2h, got {value!r}")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[(unit or "s").lower()]


def format_size(num_bytes: int | None) -> str:
    """Render bytes for people: ``301 MiB``, ``2.0 GiB``; ``-`` for unknown."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit in ("B", "KiB", "MiB"):
                return f"{value:.0f} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """Render seconds compactly: ``4s``, ``9m 12s``, ``2h 03m``, ``3d 4h``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    total = int(max(0.0, seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"
