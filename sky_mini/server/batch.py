"""Batch decisions for the tick loop, as pure functions of a record, the settings and ``now``.

- :func:`hold_reason`: may this PENDING job start now, or why not (retry backoff, schedule,
  a paused or full queue). Dependencies (``--after``) are one more such reason, checked
  alongside by the dispatcher.
- :func:`close_attempt` / :func:`should_retry` / :func:`requeue_for_retry`: the
  ``--retries`` policy: a job that ended FAILED or KILLED (not by cancel or shutdown) runs
  again under the same ID after an exponential backoff.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sky_mini.models import JobRecord, JobStatus, ReasonCode
from sky_mini.schedule import describe_wait
from sky_mini.state import read_json

RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.KILLED})
NOT_RETRIED_CODES = frozenset({ReasonCode.CANCELLED.value, ReasonCode.SHUTDOWN.value})
_LOG_HINT = "; see its log"


@dataclass
class QueueGate:
    """What the queues allow this tick: limits from config, pauses from ``paused.json``,
    and how many of each queue's jobs hold an executor (counted up as jobs start)."""

    limits: dict[str, int] = field(default_factory=dict)
    paused_all: bool = False
    paused: frozenset[str] = frozenset()
    active: Counter[str] = field(default_factory=Counter)

    def note_started(self, record: JobRecord) -> None:
        if record.queue is not None:
            self.active[record.queue] += 1


def read_paused(path: str) -> tuple[bool, frozenset[str]]:
    """(everything paused, paused queue names) from the file ``jobs pause`` writes."""
    data = read_json(path)
    if not isinstance(data, dict):
        return False, frozenset()
    queues = data.get("queues")
    names = frozenset(q for q in queues if isinstance(q, str)) if isinstance(queues, list) else ()
    return data.get("all") is True, frozenset(names)


def build_gate(limits: dict[str, int], paused_path: str, records: Iterable[JobRecord]) -> QueueGate:
    paused_all, paused = read_paused(paused_path)
    active: Counter[str] = Counter(
        r.queue for r in records if r.queue is not None and r.status.is_active
    )
    return QueueGate(limits=dict(limits), paused_all=paused_all, paused=paused, active=active)


def hold_reason(record: JobRecord, now: float, gate: QueueGate) -> str | None:
    """Why this PENDING job must not start yet, or None when only capacity decides."""
    if record.retry_at is not None and now < record.retry_at:
        return record.reason or f"retrying (attempt {record.attempt})"
    if record.scheduled_at is not None and now < record.scheduled_at:
        return describe_wait(record.scheduled_at, now)
    queue = record.queue
    if gate.paused_all:
        where = f"queue {queue}" if queue else "all jobs"
        return f"{where} paused; resume with: sky-mini jobs resume"
    if queue is None:
        return None
    if queue in gate.paused:
        return f"queue {queue} paused; resume with: sky-mini jobs resume --queue {queue}"
    limit = gate.limits.get(queue)
    if limit is not None and gate.active[queue] >= limit:
        return f"queue {queue} is full: {gate.active[queue]}/{limit} of its jobs running"
    return None


# -- retries ----------------------------------------------------------------------------


def close_attempt(record: JobRecord) -> None:
    """Append the attempt that just ended (the record's current outcome) to ``attempts``."""
    entry: dict[str, Any] = {
        "attempt": record.attempt,
        "status": record.status.value,
        "exit_code": record.exit_code,
        "reason": record.reason,
        "reason_code": record.reason_code,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "peak_memory_bytes": record.peak_memory_bytes,
    }
    record.attempts.append(entry)


def should_retry(record: JobRecord) -> bool:
    """A FAILED or KILLED attempt (not cancelled, not shutdown) with retries left."""
    if record.status not in RETRYABLE_STATUSES or record.reason_code in NOT_RETRIED_CODES:
        return False
    return record.attempt <= record.max_retries()


def backoff_seconds(failed_attempt: int, base: float, cap: float) -> float:
    """1 s, 2 s, 4 s … after attempts 1, 2, 3 … (with ``base`` 1), never over ``cap``."""
    return float(min(cap, base * 2 ** max(0, failed_attempt - 1)))


def requeue_for_retry(record: JobRecord, now: float, *, base: float, cap: float) -> float:
    """Turn a failed attempt back into a PENDING job (same ID); return the backoff used."""
    delay = backoff_seconds(record.attempt, base, cap)
    why = (record.reason or record.status.value).split(_LOG_HINT)[0]
    record.attempt += 1
    total = record.max_retries() + 1
    record.status = JobStatus.PENDING
    record.reason = f"retrying (attempt {record.attempt} of {total}) after: {why}"
    record.reason_code = None
    record.exit_code = None
    record.started_at = None
    record.finished_at = None
    record.pid = None
    record.pid_create_time = None
    record.pgid = None
    record.peak_memory_bytes = None
    record.executor = None
    record.slurm_job_id = None  # a cluster job is submitted afresh
    record.cgroup_paths = []
    record.retry_at = now + delay
    return delay
