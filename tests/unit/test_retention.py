"""Pruning of finished jobs older than jobs.retention_days."""

from __future__ import annotations

import os
from pathlib import Path

from sky_mini.models import JobRecord, JobStatus
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.server.retention import prune_finished_jobs
from sky_mini.state import Store

DAY = 86400.0


def make_store(tmp_path: Path) -> Store:
    paths = Paths(str(tmp_path / "home"))
    ensure_dirs(paths)
    return Store(paths)


def add_job(store: Store, status: JobStatus, finished_at: float | None) -> int:
    def build(job_id: int) -> JobRecord:
        record = JobRecord(
            id=job_id,
            task={"run": "true"},
            name="j",
            log_path=store.paths.job_log(job_id),
            submitted_at=0.0,
        )
        record.status = status
        record.finished_at = finished_at
        return record

    record = store.create_job(build)
    with open(record.log_path, "w") as handle:
        handle.write("output\n")
    return record.id


def test_prunes_old_finished_jobs_and_their_logs_and_stops_at_the_first_keeper(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    now = 100 * DAY
    old = [add_job(store, JobStatus.SUCCEEDED, now - 40 * DAY) for _ in range(3)]
    pending = add_job(store, JobStatus.PENDING, None)
    after = add_job(store, JobStatus.FAILED, now - 40 * DAY)
    recent = add_job(store, JobStatus.SUCCEEDED, now - DAY)
    assert prune_finished_jobs(store, now - 30 * DAY) == 3
    for job_id in old:
        assert store.load_job(job_id) is None
        assert not os.path.exists(store.paths.job_log(job_id))
    # The unfinished job stops the walk: everything after it stays, even if old.
    for job_id in (pending, after, recent):
        assert store.load_job(job_id) is not None
    # IDs are never reused after pruning.
    assert add_job(store, JobStatus.PENDING, None) == recent + 1


def test_second_pass_starts_where_the_first_stopped(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    now = 100 * DAY
    for _ in range(5):
        add_job(store, JobStatus.SUCCEEDED, now - 40 * DAY)
    assert prune_finished_jobs(store, now - 30 * DAY) == 5
    keeper = add_job(store, JobStatus.SUCCEEDED, now)
    assert prune_finished_jobs(store, now - 30 * DAY) == 0
    assert store.load_job(keeper) is not None
