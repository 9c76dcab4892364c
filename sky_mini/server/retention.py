"""Pruning of finished jobs older than ``jobs.retention_days`` (run by the server)."""

from __future__ import annotations

from sky_mini.state import Store, read_json

PRUNE_FLOOR_FILE = "pruned_below"


def prune_finished_jobs(store: Store, cutoff: float) -> int:
    """Delete finished jobs (record and log) that finished before ``cutoff``.

    IDs grow with submission time, so the scan walks up from the last floor and stops at the
    first job that must stay: the cost is the number of jobs pruned, not the history size.
    """
    floor_path = f"{store.paths.jobs_dir}/{PRUNE_FLOOR_FILE}.json"
    data = read_json(floor_path)
    floor = data.get("below", 1) if isinstance(data, dict) else 1
    floor = floor if isinstance(floor, int) and floor >= 1 else 1
    next_id = store.next_id()
    removed = 0
    job_id = floor
    while job_id < next_id:
        record = store.load_job(job_id)
        if record is not None:
            finished = record.finished_at
            if not record.status.is_terminal or finished is None or finished >= cutoff:
                break
            store.delete_job(job_id)
            removed += 1
        job_id += 1
    if job_id != floor:
        from sky_mini.state import atomic_write_json

        atomic_write_json(floor_path, {"schema": 1, "below": job_id}, durable=False)
    return removed
