"""When a job may start: ``--at`` / ``--in`` parsing and the "scheduled for …" wording.

A leaf module (stdlib only; it runs on the cron-facing submit path). Times are the local
time of the machine, as cron's are.
"""

from __future__ import annotations

import datetime as dt
import re

from sky_mini.errors import UsageError
from sky_mini.units import format_duration, parse_duration

_CLOCK_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_at(value: str, now: float) -> float:
    """``--at``: ``HH:MM`` (the next time the clock shows it, as at(1)) or an ISO date-time
    such as ``2026-12-02T03:00`` (local time unless it names a zone). A time already past
    is returned as is: the job runs at once."""
    text = value.strip()
    match = _CLOCK_RE.match(text)
    if match:
        today = dt.datetime.fromtimestamp(now)
        at = today.replace(hour=int(match[1]), minute=int(match[2]), second=0, microsecond=0)
        if at.timestamp() <= now:
            at += dt.timedelta(days=1)
        return at.timestamp()
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--at {value!r}: give a local time as HH:MM (e.g. 03:00) or an ISO date-time "
            "(e.g. 2026-12-02T03:00)"
        ) from None
    return parsed.timestamp()  # naive means local time, as cron's


def parse_in(value: str, now: float) -> float:
    """``--in 10m``: now plus a duration (``90``, ``30s``, ``10m``, ``2h``, ``1d``)."""
    try:
        return now + parse_duration(value)
    except ValueError:
        raise UsageError(f"--in {value!r}: give a duration such as 30s, 10m, 2h or 1d") from None


def start_time(at: str | None, in_: str | None, now: float) -> float | None:
    """The job's ``scheduled_at`` from the two flags (at most one may be given)."""
    if at is not None and in_ is not None:
        raise UsageError("give --at or --in, not both")
    if at is not None:
        return parse_at(at, now)
    if in_ is not None:
        return parse_in(in_, now)
    return None


def describe_wait(at: float, now: float) -> str:
    """``scheduled for 03:00 (in 4h 59m)``: minute-grained, so the reason (and the record
    holding it) changes at most once a minute."""
    local = dt.datetime.fromtimestamp(at)
    same_day = local.date() == dt.datetime.fromtimestamp(now).date()
    when = (
        local.strftime("%H:%M")
        if same_day or at - now < 12 * 3600
        else local.strftime("%Y-%m-%d %H:%M")
    )
    left = at - now
    if left < 60:
        return f"scheduled for {when} (in less than a minute)"
    return f"scheduled for {when} (in {format_duration(left - left % 60).removesuffix(' 00s')})"
