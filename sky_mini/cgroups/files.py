"""Shared by the parts: the group-name rule, polling, and never-raising cgroup file I/O."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger("sky_mini.cgroups")

GROUP_PREFIX = "sky-mini-"
"""Only directories named like this (or below one) are ever killed or removed."""

POLL_INTERVAL_SECONDS = 0.005


def _check_name(name: str, *, must_have_prefix: bool) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"invalid cgroup name {name!r}: must be one path component")
    if must_have_prefix and not name.startswith(GROUP_PREFIX):
        raise ValueError(f"invalid cgroup base name {name!r}: must start with {GROUP_PREFIX!r}")


def _child_dirs(directory: str) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(POLL_INTERVAL_SECONDS, remaining))


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _read_words(path: str) -> set[str]:
    return set((_read_text(path) or "").split())


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_keyed(path: str, key: str) -> int | None:
    """The integer after ``key`` in a flat-keyed file such as ``memory.events``."""
    for line in (_read_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            try:
                return int(parts[1])
            except ValueError:
                return None
    return None


def _read_pids(path: str) -> set[int]:
    pids: set[int] = set()
    for word in (_read_text(path) or "").split():
        with contextlib.suppress(ValueError):
            pids.add(int(word))
    return pids


def _write_file(path: str, value: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        log.debug("cannot open %s: %s", path, exc)
        return False
    try:
        os.write(fd, value.encode())
        return True
    except OSError as exc:
        log.debug("cannot write %r to %s: %s", value, path, exc)
        return False
    finally:
        os.close(fd)
