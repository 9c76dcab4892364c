"""Client side of the batch features: ``--unique``/``--queue``/``--at`` submission,
``jobs restart``, ``jobs clean`` and ``jobs pause|resume``.

Like ``client``, it meets the server only in files: a record carries the job's queue and
start time, ``jobs/paused.json`` says which queues are paused (the server reads it every
tick, so a pause outlives any server). Only light imports: this runs on the cron path.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

from sky_mini.errors import UsageError
from sky_mini.models import JobRecord
from sky_mini.paths import Paths
from sky_mini.state import Store, atomic_write_json, flocked, read_json


class BatchOptions(NamedTuple):
    """What ``jobs launch`` records besides the task (all optional). A NamedTuple, not a
    dataclass: cheaper to define on the cron path."""

    unique: bool = False
    queue: str | None = None
    scheduled_at: float | None = None


def check_queue(paths: Paths, queue: str | None) -> None:
    """An unknown queue is refused (exit 2) before anything is recorded."""
    if queue is None:
        return
    from sky_mini.config import load_settings

    known = load_settings(paths).queues
    if queue not in known:
        listed = ", ".join(sorted(known)) or "none are configured"
        raise UsageError(
            f"--queue {queue!r}: no such queue in {paths.config} (known: {listed}); add it "
            f"under 'queues:', e.g. queues: {{{queue}: {{parallel: 1}}}}"
        )


def submit(
    paths: Paths,
    task: dict[str, Any],
    name: str,
    options: BatchOptions,
    *,
    fields: dict[str, Any] | None = None,
    secrets: dict[str, str] | None = None,
) -> tuple[JobRecord, bool]:
    """Record a job; (record, deduplicated). With ``unique``, an unfinished job of the same
    name is returned instead and nothing is recorded. ``fields``: more record fields
    (``after``, ``pipeline``)."""
    from sky_mini.client import submit_job, submit_unique_job

    check_queue(paths, options.queue)
    fields = {**(fields or {}), "queue": options.queue, "scheduled_at": options.scheduled_at}
    if options.unique:
        return submit_unique_job(paths, task, name, fields=fields, secrets=secrets)
    return submit_job(paths, task, name, fields=fields, secrets=secrets), False


def restart(paths: Paths, job_id: int) -> JobRecord:
    """``jobs restart ID``: the same task, environment, name and queue as a new job."""
    from sky_mini.client import load_job, submit_job

    old = load_job(paths, job_id)
    return submit_job(paths, old.task, old.name, env=old.env, fields={"queue": old.queue})


class CleanResult:
    """What ``jobs clean`` did (a plain class: this module is on the cron path)."""

    def __init__(self, removed: list[int], freed_bytes: int, kept_unfinished: int) -> None:
        self.removed = removed
        self.freed_bytes = freed_bytes
        self.kept_unfinished = kept_unfinished

    def __repr__(self) -> str:
        return (
            f"CleanResult(removed={self.removed!r}, freed_bytes={self.freed_bytes!r}, "
            f"kept_unfinished={self.kept_unfinished!r})"
        )


def clean(paths: Paths, older_than: float | None, now: float) -> CleanResult:
    """Delete finished jobs (record and log) that finished before ``now - older_than``
    (every finished job when None). Unfinished jobs are never touched."""
    store = Store(paths)
    result = CleanResult([], 0, 0)
    cutoff = None if older_than is None else now - older_than
    for job_id in range(1, store.next_id()):
        record = store.load_job(job_id)
        if record is None:
            continue
        if not record.status.is_terminal:
            result.kept_unfinished += 1
            continue
        if cutoff is not None and (record.finished_at or 0.0) >= cutoff:
            continue
        for path in (paths.job_record(job_id), paths.job_log(job_id)):
            try:
                result.freed_bytes += os.lstat(path).st_size
            except OSError:
                pass
        store.delete_job(job_id)  # the record and logs/<id>.log
        result.removed.append(job_id)
    return result


def set_paused(paths: Paths, queue: str | None, paused: bool) -> tuple[bool, list[str]]:
    """Pause or resume one queue (``queue``) or everything (None); return the new state.

    Resuming everything also resumes every paused queue. Read-modify-write under the ID
    lock, so two CLIs pausing different queues at once both count.
    """
    check_queue(paths, queue)
    with flocked(paths.id_lock):
        paused_all, queues = read_paused_state(paths)
        if queue is None:
            paused_all = paused
            if not paused:
                queues = set()
        elif paused:
            queues.add(queue)
        else:
            queues.discard(queue)
        data = {"schema": 1, "all": paused_all, "queues": sorted(queues), "at": time.time()}
        atomic_write_json(paths.paused, data)
    return paused_all, sorted(queues)


def read_paused_state(paths: Paths) -> tuple[bool, set[str]]:
    data = read_json(paths.paused)
    if not isinstance(data, dict):
        return False, set()
    queues = data.get("queues")
    names = {q for q in queues if isinstance(q, str)} if isinstance(queues, list) else set()
    return data.get("all") is True, names
