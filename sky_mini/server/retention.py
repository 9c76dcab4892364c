"""Pruning of finished jobs older than ``jobs.retention_days`` (run by the server), and
the one slow read of the older history after a start."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sky_mini.state import Store, read_json

if TYPE_CHECKING:
    from sky_mini.server.main import Server

log = logging.getLogger("sky_mini.server")

PRUNE_FLOOR_FILE = "pruned_below"
PRUNE_INTERVAL_SECONDS = 3600.0
HISTORY_SCAN_BATCH = 500


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


def scan_history(server: Server) -> None:
    """Read every older record once after start, a batch per tick, so a damaged one is
    quarantined (and a newer-schema one reported) without slowing the start itself."""
    stop = min(server.scan_end + 1, server.scan_cursor + HISTORY_SCAN_BATCH)
    for job_id in range(server.scan_cursor, stop):
        if job_id not in server.jobs:
            server.store.load_job(job_id)
    server.scan_cursor = stop


def prune_history(server: Server, now: float) -> None:
    if now - server.last_prune < PRUNE_INTERVAL_SECONDS:
        return
    server.last_prune = now
    removed = prune_finished_jobs(server.store, now - server.settings.retention_days * 86400)
    if removed:
        log.info(
            "pruned %d finished job(s) older than %g days",
            removed,
            server.settings.retention_days,
        )
