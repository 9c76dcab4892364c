"""A read-only view of a home's store for the http component: it never writes or quarantines.

The CLI quarantines a damaged record when it meets one; the http component only skips it
(no endpoint writes anything). Finished records never change, so :class:`JobIndex` keeps a
small summary of each and re-reads only unfinished and new ones: a scrape of a 10,000-job
history costs one ``listdir`` plus the few records that moved.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sky_mini.models import JobRecord, JobStatus, job_from_json
from sky_mini.paths import Paths
from sky_mini.state import read_json

MAX_SCAN = 20_000
"""At most this many records are read for one API listing (newest first)."""


def read_job(paths: Paths, job_id: int) -> JobRecord | None:
    """The record of ``job_id``, or None if missing, damaged or from a newer sky-mini."""
    try:
        data = read_json(paths.job_record(job_id), quarantine_bad=False)
    except OSError:
        return None
    if data is None:
        return None
    try:
        return job_from_json(data)
    except ValueError:
        return None


def read_server_status(paths: Paths) -> dict[str, Any] | None:
    """The server's snapshot (``server/status.json``) if it says the server runs."""
    try:
        data = read_json(paths.server_status, quarantine_bad=False)
    except OSError:
        return None
    if not isinstance(data, dict) or data.get("state") not in ("running", "stopping"):
        return None
    return data


def recorded_ids(paths: Paths) -> list[int]:
    """Every job ID with a record file, ascending (one ``listdir``)."""
    ids = []
    try:
        names = os.listdir(paths.jobs_dir)
    except OSError:
        return []
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and ext == "json" and stem.isascii() and stem.isdigit():
            ids.append(int(stem))
    return sorted(ids)


def active_ids(paths: Paths) -> set[int]:
    """Unfinished IDs per the server's active index, plus IDs it has not seen yet."""
    data = read_json(paths.active_index, quarantine_bad=False)
    active: set[int] = set()
    seen = 0
    if isinstance(data, dict):
        active = {i for i in data.get("active", []) if isinstance(i, int)}
        seen = data.get("seen_through", 0) if isinstance(data.get("seen_through"), int) else 0
    return active | {i for i in recorded_ids(paths) if i > seen}


def iter_jobs_desc(paths: Paths) -> Iterator[JobRecord]:
    """Records newest first, at most :data:`MAX_SCAN` of them."""
    for job_id in reversed(recorded_ids(paths)[-MAX_SCAN:]):
        record = read_job(paths, job_id)
        if record is not None:
            yield record


@dataclass(frozen=True)
class JobSummary:
    """What metrics and the activity chart need of one record."""

    id: int
    status: JobStatus
    reason_code: str | None
    executor: str | None
    duration: float | None
    peak_memory_bytes: int | None
    finished_at: float | None

    @classmethod
    def of(cls, record: JobRecord) -> JobSummary:
        return cls(
            id=record.id,
            status=record.status,
            reason_code=record.reason_code,
            executor=record.executor,
            duration=record.duration(),
            peak_memory_bytes=record.peak_memory_bytes,
            finished_at=record.finished_at,
        )


class JobIndex:
    """Summaries of every recorded job; finished ones are read once and then cached."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.finished: dict[int, JobSummary] = {}

    def refresh(self) -> list[JobSummary]:
        """Every job's summary now, ascending by ID."""
        ids = recorded_ids(self.paths)
        present = set(ids)
        for gone in [i for i in self.finished if i not in present]:
            del self.finished[gone]  # pruned by retention
        summaries = []
        for job_id in ids:
            summary = self.finished.get(job_id)
            if summary is None:
                record = read_job(self.paths, job_id)
                if record is None:
                    continue
                summary = JobSummary.of(record)
                if record.status.is_terminal:
                    self.finished[job_id] = summary
            summaries.append(summary)
        return summaries
