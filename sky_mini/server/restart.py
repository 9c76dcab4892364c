"""Restart reconciliation: what a dead predecessor left, before the first tick.

Kill what carries this home's marker, offer interrupted jobs to their backend
(``Backend.reattach``), record the rest ``KILLED``/``supervisor_lost``, adopt PENDING jobs,
and remove leftover cgroups. Pueue's ``restore_state``, conservatively.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from sky_mini import procs
from sky_mini.models import JobRecord, JobStatus, ReasonCode
from sky_mini.server.admission import job_needs
from sky_mini.state import read_json

if TYPE_CHECKING:
    from sky_mini.server.main import Server

log = logging.getLogger("sky_mini.server")


def reconcile_previous_instance(server: Server) -> None:
    """Kill what a dead predecessor left and record its interrupted jobs as lost."""
    previous = read_json(server.paths.server_status)
    last_seen = None
    if isinstance(previous, dict):
        last_seen = previous.get("updated_at")
    if "sweep" not in server.settings.disabled:
        killed = procs.sweep_marked([f"{server.key}:"])
        if killed:
            log.warning("killed %d leftover process(es) of a previous server", len(killed))
    leftovers: list[str] = []
    interrupted: list[JobRecord] = []
    candidates, next_id = server.unfinished_job_ids()
    started = server.start_log.read_started()  # before startlog.empty: see startlog
    for job_id in candidates:
        record = server.store.load_job(job_id)
        if record is None or record.status.is_terminal:
            continue
        if record.infra != "local":
            server.adopt_remote(record)  # work handed to Slurm outlives any server
            continue
        if record.status is JobStatus.PENDING and (record.id, record.attempt) in started:
            interrupted.append(record)  # handed to an executor, then its record not written
        elif record.status is JobStatus.PENDING:
            server.adopt_job(job_id)
        elif record.status.is_active:
            leftovers.extend(record.cgroup_paths)
            interrupted.append(record)
    reattached = set(server.reattach_jobs(interrupted))
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last_seen))
        if isinstance(last_seen, int | float)
        else "an unknown time"
    )
    for record in interrupted:
        if record.id in reattached:
            continue
        record.finish(
            JobStatus.KILLED,
            now=server.clock(),
            reason=(
                f"the server stopped while this job ran (last seen alive {when}); submit it again"
            ),
            reason_code=ReasonCode.SUPERVISOR_LOST.value,
            exit_code=None,
        )
        log.warning("job %d was running when the previous server died", record.id)
        if server.end_attempt(record, server.clock()):
            server.adopt_job(record.id)
    # Every record below the counter *as read above* has been looked at, so the first
    # load_new_jobs need not read the whole history again. Not the counter now: CLIs
    # racing this start may have recorded jobs since, and load_new_jobs must adopt them.
    server.seen_through = max([server.seen_through, next_id - 1, *candidates])
    server.scan_end = server.seen_through
    server.active_dirty = True
    if server.cgroup_caps is not None:
        from sky_mini.cgroups import sweep_base

        with contextlib.suppress(OSError):
            sweep_base(server.cgroup_caps, f"sky-mini-{server.key}", leftovers)


def reattach_jobs(server: Server, records: list[JobRecord]) -> list[int]:
    """Offer each backend its interrupted jobs; return the IDs one took back."""
    assert server.backend is not None
    backend = server.backend
    taken = backend.reattach([r for r in records if backend.owns(r)])
    for record in records:
        if record.id in taken:
            record.instance_id = server.instance_id
            server.jobs[record.id] = record
            server.capacity.reserve(
                record.id, *job_needs(record, server.capacity.cpus)
            )  # it still holds them
    return taken


def unfinished_job_ids(server: Server) -> tuple[list[int], int]:
    """IDs that may be unfinished, and the next ID as read when they were listed.

    The IDs are the active index's plus every ID after its ``seen_through``.
    """
    active, seen_through = server.store.read_active()
    if not os.path.exists(server.paths.active_index):
        seen_through = 0  # no index: look at every record once
    next_id = server.store.next_id()
    return sorted(set(active) | set(range(seen_through + 1, next_id))), next_id
