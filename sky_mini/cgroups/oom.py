"""OOM evidence: read a job group's OOM-kill counter and memory peak, and classify a death."""

from __future__ import annotations

import os
import signal

from sky_mini.cgroups.files import _read_int, _read_keyed

PEAK_AT_LIMIT_FRACTION = 0.99
"""A SIGKILLed job whose peak reached this fraction of its limit died of the limit."""

PEAK_OWN_LIMIT_FRACTION = 0.90
"""An OOM kill with the peak below this fraction of the job's limit came from elsewhere."""


def read_oom_kill_count(v1_dir: str | None, v2_dir: str | None) -> int | None:
    """A job group's OOM-kill counter: v1 ``memory.oom_control``, else v2 ``memory.events``.

    Counts kills of any cause (own limit, ancestor's, host's); None if neither is readable.
    """
    if v1_dir is not None:
        value = _read_keyed(os.path.join(v1_dir, "memory.oom_control"), "oom_kill")
        if value is not None:
            return value
    if v2_dir is not None:
        return _read_keyed(os.path.join(v2_dir, "memory.events"), "oom_kill")
    return None


def read_memory_bytes(
    v1_dir: str | None, v2_dir: str | None, v1_file: str, v2_file: str
) -> int | None:
    """A byte count from the v1 group's ``v1_file``, else the v2 group's ``v2_file``."""
    if v1_dir is not None:
        value = _read_int(os.path.join(v1_dir, v1_file))
        if value is not None:
            return value
    if v2_dir is not None:
        return _read_int(os.path.join(v2_dir, v2_file))
    return None


def classify_memory_death(
    limit_bytes: int | None,
    peak_bytes: int | None,
    oom_kills: int | None,
    killed_by_signal: int | None,
) -> str | None:
    """Say whether a finished job died of memory: ``"memory_limit"``, ``"oom"`` or None.

    ``oom_kills`` is the job group's counter delta; it also counts kills forced by an
    ancestor's limit or by the host (see the :mod:`sky_mini.cgroups` docstring). So a
    recorded kill is the job's own ``"memory_limit"`` only if it has a limit and its peak got
    near it (or the peak is unknown); otherwise it is ``"oom"``, a host or container OOM.
    Without a counter, a SIGKILL with the peak at >= 99 % of the limit is taken as the limit.
    A known zero counter is trusted: a SIGKILL at the limit is then someone's kill, not an OOM.
    """
    if oom_kills is not None and oom_kills > 0:
        if limit_bytes is None:
            return "oom"
        if peak_bytes is not None and peak_bytes < PEAK_OWN_LIMIT_FRACTION * limit_bytes:
            return "oom"
        return "memory_limit"
    if (
        oom_kills is None
        and limit_bytes is not None
        and peak_bytes is not None
        and killed_by_signal == signal.SIGKILL
        and peak_bytes >= PEAK_AT_LIMIT_FRACTION * limit_bytes
    ):
        return "memory_limit"
    return None
