"""What the server publishes: job records, ``jobs/active.json`` and ``server/status.json``.

The server must outlive a full disk: a record it cannot save stays in memory and is
retried every tick; the status and the active index are retried too.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING

from sky_mini import __version__, procs
from sky_mini.models import JobRecord, JobStatus
from sky_mini.state import atomic_write_json

if TYPE_CHECKING:
    from sky_mini.server.main import Server

log = logging.getLogger("sky_mini.server")

STATUS_HEARTBEAT_SECONDS = 5.0
STATUS_MIN_INTERVAL_SECONDS = 0.25
"""While jobs come and go, status.json and jobs/active.json are rewritten at most this often.
Each write is a rename, which waits for the journal behind every fsync on the disk (2.7 ms
each in a profiled drain on a busy machine): at 50 ms these two were 40 % of the server's
renames. Neither needs to be fresher: a stale active index only lists finished jobs as
unfinished, and job states are read from the records. Only while jobs wait to be dispatched
(a queue draining): once none is PENDING, the next tick writes both at once, so a job's end
and its executor's freeing show together in ``api status`` and ``/metrics``."""
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def save_job(server: Server, record: JobRecord, *, durable: bool = True) -> None:
    """Write a record; on a full disk keep it in memory and retry every tick.

    The server must outlive a full disk: its in-memory record is the truth until the
    write succeeds (clients see the last record written until then).
    """
    try:
        server.store.save_job(record, durable=durable)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        if record.id not in server.unsaved:
            log.warning(
                "cannot save job %d's record (%s); will retry when there is space",
                record.id,
                exc.strerror,
            )
        server.unsaved[record.id] = record
        return
    if server.unsaved.pop(record.id, None) is not None:
        server.active_dirty = True  # on disk at last: it may leave the index


NOTE_WAITING_AFTER_SECONDS = 1.0
"""A PENDING job's waiting reason is written to its record once it has waited this long."""


def note_waiting(server: Server, record: JobRecord, reason: str, now: float) -> None:
    """Record why a PENDING job waits; written once it has waited a moment (a queue that
    drains at once would otherwise pay one record write per job for a reason nobody saw)."""
    if record.reason == reason and record.id not in server.unsaved_waits:
        return
    record.reason = reason
    if now - record.submitted_at < NOTE_WAITING_AFTER_SECONDS:
        server.unsaved_waits.add(record.id)
        return
    server.unsaved_waits.discard(record.id)
    server.save_job(record, durable=False)


START_WRITE_DELAY_SECONDS = 0.05
"""How long a started job's record (RUNNING, its PID and groups) may wait to be written: a
job that ends sooner is written once, when it ends. Its start is in the start log already
(``startlog``), so a server that dies in between never runs it again."""


def defer_start_write(server: Server, record: JobRecord, now: float) -> None:
    """Write the record of a job that just started once it has run a moment (see above)."""
    server.unwritten_runs.setdefault(record.id, now + START_WRITE_DELAY_SECONDS)


def write_due_starts(server: Server, now: float) -> None:
    """Write the started records whose moment has come (not durably, as before)."""
    for job_id, due in list(server.unwritten_runs.items()):
        if due > now:
            continue
        del server.unwritten_runs[job_id]
        record = server.jobs.get(job_id)
        if record is not None and record.status.is_active:
            save_job(server, record, durable=False)


OUTCOME_BATCH_SECONDS = 0.02
OUTCOME_BATCH_MAX = 32
"""While more news is already waiting, the outcomes in hand wait for it (at most this long,
at most this many): one pass of fsyncs then makes all of them durable. A drain of two
executors otherwise pays two journal commits per finished job, and the other executor's
news waits behind them."""


def record_outcomes(server: Server, now: float) -> None:
    """Write the records of the jobs that ended this tick, durably, in one pass of fsyncs
    (each file, then the directory once); only then is anyone told (hooks, dependents).

    Runs after ``dispatch_pending``: the executor a job freed already has its next job
    while these fsyncs run. While more news is already waiting the pass waits for it
    (``OUTCOME_BATCH_SECONDS``), so one pass covers both. Nobody learns of an outcome
    before it is durable: clients read the record (``jobs wait``, ``logs``), and a job
    ``--after`` one of these judges it by its record on disk (still unfinished there), so
    it starts on the next tick, which ``dispatch_due`` makes immediate.

    First the starts that are due (``write_due_starts``), and the STARTING records of
    jobs dispatched this tick that the start log could not take (not durably): after every
    executor has its message, not between two of them.
    """
    starts, server.unwritten_starts = server.unwritten_starts, []
    for record in starts:
        if record.status is JobStatus.STARTING:  # not already moved on (a group's stop)
            save_job(server, record, durable=False)
    if server.unwritten_runs:
        write_due_starts(server, now)
    if not server.unrecorded:
        return
    if (
        server.stop_requested is None
        and len(server.unrecorded) < OUTCOME_BATCH_MAX
        and now - server.unrecorded_since < OUTCOME_BATCH_SECONDS
        and server.events_waiting()
    ):
        return  # take that news first; next_timeout wakes the loop when the wait is up
    records = list(server.unrecorded.values())
    server.unrecorded.clear()
    try:
        server.store.save_jobs(records)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        for record in records:  # one by one: a full disk keeps a record in unsaved
            save_job(server, record)
    else:
        for record in records:
            server.unsaved.pop(record.id, None)
    server.active_dirty = True  # they leave the index only now (write_active_index)
    for record in records:
        server.release_job_extras(record.id)
        server.hooks.job_ended(record, now)
    server.dispatch_due = any(r.after for r in server.jobs.values())


def retry_unsaved_jobs(server: Server) -> None:
    for record in list(server.unsaved.values()):
        server.save_job(record)


def held_back(server: Server, last_write: float, now: float) -> bool:
    """True while a queue drains and the last write was under the pacing interval ago."""
    return now - last_write < STATUS_MIN_INTERVAL_SECONDS and any(
        r.status is JobStatus.PENDING for r in server.jobs.values()
    )


def write_active_index(server: Server, *, force: bool = False) -> None:
    if not server.active_dirty:
        return
    now = server.clock()
    if not force and held_back(server, server.last_active_write, now):
        return  # still dirty; a stale index only lists finished jobs as unfinished
    # A job stays listed until its end is on disk: one whose outcome waits for its pass of
    # fsyncs (record_outcomes) or for disk space (unsaved) still reads unfinished there,
    # and the next server reconciles only what the index lists and what came after it.
    listed = set(server.jobs) | set(server.unrecorded) | set(server.unsaved)
    try:
        server.store.write_active(sorted(listed), server.seen_through)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        return  # still dirty: retried next tick
    server.active_dirty = False
    server.last_active_write = now


def write_status(server: Server, *, force: bool = False, state: str | None = None) -> None:
    now = server.clock()
    if not (
        force or server.status_dirty or now - server.last_status_write >= STATUS_HEARTBEAT_SECONDS
    ):
        return
    if not force and held_back(server, server.last_status_write, now):
        return  # still dirty: a tick writes it at most STATUS_MIN_INTERVAL_SECONDS later
    if state is None:
        state = "stopping" if server.stop_requested is not None else "running"
    pending = sum(1 for r in server.jobs.values() if r.status is JobStatus.PENDING)
    autostop_at = None
    if server.idle_minutes is not None and server.idle_since is not None:
        autostop_at = server.idle_since + server.idle_minutes * 60
    components = server.backend_components()
    if server.services is not None:
        components.extend(server.services.components())
    if server.http is not None:
        components.extend(server.http.components())
    status = {
        "schema": 1,
        "state": state,
        "pid": os.getpid(),
        "create_time": procs.process_create_time(os.getpid()),
        "instance_id": server.instance_id,
        "version": __version__,
        "home": server.paths.home,
        "started_at": server.started_at,
        "updated_at": now,
        "detached": server.detached,
        "idle_minutes": server.idle_minutes,
        "autostop_at": autostop_at,
        "stop_reason": server.stop_requested,
        "warnings": server.warnings,
        "capacity": {
            "cpus": server.capacity.cpus,
            "memory_bytes": server.capacity.memory_bytes,
            "used_cpus": server.capacity.used_cpus,
            "used_memory_bytes": server.capacity.used_memory,
        },
        "queue": {"pending": pending, "running": len(server.jobs) - pending},
        "components": components,
        "services": server.services.status_json() if server.services is not None else None,
        **server.details,
    }
    try:
        atomic_write_json(server.paths.server_status, status, durable=False)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        log.warning("cannot write %s: no space left on device", server.paths.server_status)
    server.status_dirty = False
    server.last_status_write = now
