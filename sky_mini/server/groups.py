"""Job groups (a task file whose header says ``execution: parallel``), as SkyPilot means them.

- Gang start: no task of a group starts until every one can start at the same moment (CPU,
  memory, executors and GPUs for all of them at once); until then each waits with a reason
  naming what the group waits for. A task that ends before the group started (cancelled,
  a failed ``--after``) ends the others CANCELLED with ``dependency_failed``.
- ``primary_tasks``: once every primary task has ended, each other (auxiliary) task still
  running is stopped after its ``termination_delay`` and ends CANCELLED, reason_code
  ``group_done``. Without ``primary_tasks`` every task is primary: each runs to its own end.

Members are found by ``record.group["id"]`` (the group's first job); ``size`` says how many
there are, so a group half recorded by its client does not start. The server calls
:func:`dispatch_group` from ``dispatch_pending`` and :func:`stop_auxiliaries` once a tick.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sky_mini.models import JobRecord, JobStatus, ReasonCode
from sky_mini.server.admission import job_needs
from sky_mini.server.deps import dependency_gate
from sky_mini.units import format_size

if TYPE_CHECKING:
    from sky_mini.server.batch import QueueGate
    from sky_mini.server.main import Server

log = logging.getLogger("sky_mini.server")

STOPPING_REASON = "stopping: every primary task of its job group ended"
STOPPED_REASON = "stopped: every primary task of its job group ended (termination_delay)"


def group_id(record: JobRecord) -> int | None:
    group = record.group
    return int(group["id"]) if group and group.get("id") else None


def members_of(server: Server, gid: int, size: int) -> list[JobRecord]:
    """Every recorded member of group ``gid``: the server's unfinished jobs, then (when some
    are missing) the finished ones from the store. IDs start at ``gid``."""
    found = {j: r for j, r in server.jobs.items() if group_id(r) == gid}
    if len(found) < size:
        for job_id in range(gid, server.store.next_id()):
            if job_id in found:
                continue
            record = server.store.load_job(job_id)
            if record is not None and group_id(record) == gid:
                found[job_id] = record
            if len(found) >= size:
                break
    return [found[j] for j in sorted(found)]


def label(record: JobRecord) -> str:
    return f"job group {record.pipeline!r}" if record.pipeline else "the job group"


def dispatch_group(server: Server, record: JobRecord, now: float, gate: QueueGate) -> bool:
    """Handle a PENDING member of a job group. True: handled here (started with the whole
    group, or waiting); False: the group already started (a retry), dispatch it alone."""
    group = record.group or {}
    gid, size = group_id(record), int(group.get("size") or 1)
    if gid is None:
        return False
    members = members_of(server, gid, size)
    if any(m.started_at is not None for m in members):
        return False
    what = label(record)
    if len(members) < size:
        server.note_waiting(record, f"{what}: waiting for its other tasks to be recorded")
        return True
    ended = [m for m in members if m.status.is_terminal]
    if ended:
        first = ended[0]
        cancel_pending(
            server,
            members,
            f"not run: job {first.id} ({first.name}) of {what} ended "
            f"{first.status.value} before the group started",
            now,
        )
        return True
    if record.id != members[0].id:
        return True  # the group's first job decides for every member (it came first)
    reason = group_blocker(server, members, now, gate)
    if reason is not None:
        for member in members:
            if member.status is JobStatus.PENDING:  # not the ones the check just ended
                server.note_waiting(member, f"{what}: all {size} tasks start together; {reason}")
        return True
    start_together(server, members, now, gate)
    return True


def group_blocker(
    server: Server, members: list[JobRecord], now: float, gate: QueueGate
) -> str | None:
    """Why the group cannot start at this moment (None: it can). May cancel the group (a
    failed dependency) or fail it (it can never fit), which also returns a reason."""
    from sky_mini.server import batch

    for member in members:
        if member.after:
            verdict = dependency_gate(
                member, lambda j: server.jobs.get(j) or server.store.load_job(j)
            )
            if verdict.action == "cancel":
                cancel_pending(server, members, verdict.reason or "a dependency failed", now)
                return "cancelled"
            if verdict.action == "wait":
                return f"job {member.id} is {verdict.reason}"
        held = batch.hold_reason(member, now, gate)
        if held is not None:
            return f"job {member.id}: {held}"
    local = [m for m in members if m.infra == "local"]
    cpus = memory = 0.0
    for member in local:
        need_cpus, need_memory = job_needs(member, server.capacity.cpus)
        cpus, memory = cpus + need_cpus, memory + need_memory
    if local and not server.capacity.fits_ever(cpus, int(memory)):
        fail_never_fits(server, members, cpus, int(memory), now)
        return "never fits"
    never = never_together(server, members, len(local), gate)
    if never is not None:
        fail_group(server, members, never, now)
        return "never fits"
    if server.backend is None or server.backend.free_slots() < len(local):
        return f"needs {len(local)} free executors at once"
    if not server.capacity.fits_now(cpus, int(memory)):
        return server.capacity.waiting_reason(cpus, int(memory))
    return None


def start_together(server: Server, members: list[JobRecord], now: float, gate: QueueGate) -> None:
    """Reserve GPUs for every local member first (all or none), then start them all and hand
    the Slurm members to their cluster in the same tick."""
    local = [m for m in members if m.infra == "local"]
    reserved: list[int] = []
    for member in local:
        if not server.reserve_gpus(member):  # notes the GPU it waits for on this member
            for job_id in reserved:
                server.release_job_extras(job_id, final=False)
            waiting = member.reason or "waiting for GPUs"
            for other in members:
                server.note_waiting(other, f"{label(other)}: all tasks start together; {waiting}")
            return
        reserved.append(member.id)
    for member in members:
        if member.infra != "local":
            server.launch_remote(member)
            continue
        cpus, memory = job_needs(member, server.capacity.cpus)
        server.start_local(member, cpus, memory, now, gate)
    log.info("%s: started jobs %s together", label(members[0]), [m.id for m in members])


def cancel_pending(server: Server, members: list[JobRecord], reason: str, now: float) -> None:
    for member in members:
        if member.status is JobStatus.PENDING:
            end_pending(
                server, member, JobStatus.CANCELLED, reason, ReasonCode.DEPENDENCY_FAILED, now
            )


def never_together(
    server: Server, members: list[JobRecord], local: int, gate: QueueGate
) -> str | None:
    """What can never hold all the group's tasks at once besides CPU and memory: fewer job
    executors than local tasks, or a queue whose ``parallel`` is below its share."""
    executors = getattr(server.pool, "job_executors", None)
    if isinstance(executors, int) and local > executors:
        return (
            f"{label(members[0])} has {local} tasks that start together but this server runs "
            f"at most {executors} jobs at once (see api status); split the group or raise "
            "server.executors in config.yaml"
        )
    if not gpus_fit_together(server, [m for m in members if m.infra == "local"]):
        return (
            f"{label(members[0])} asks for more GPUs at once than this machine has "
            f"({', '.join(server.gpu_pool.devices) or 'none'}); its tasks start together"
        )
    for queue, limit in gate.limits.items():
        share = sum(1 for m in members if m.queue == queue)
        if share > limit:
            return (
                f"{label(members[0])} has {share} tasks in queue {queue!r}, which runs at most "
                f"{limit} at once (queues.{queue}.parallel); its tasks start together"
            )
    return None


def gpus_fit_together(server: Server, local: list[JobRecord]) -> bool:
    """Would every member's GPUs fit on this machine's devices when all of them are free?"""
    from sky_mini.server.gpus import GpuPool

    empty = GpuPool(list(server.gpu_pool.devices))
    for member in local:
        resources = member.task.get("resources") or {}
        count = float(resources.get("gpus") or 0.0)
        if count <= 0:
            continue
        indices = empty.pick(resources.get("accelerator"), count)
        if indices is None:
            return False
        empty.reserve(member.id, indices, count)
    return True


def fail_never_fits(
    server: Server, members: list[JobRecord], cpus: float, memory: int, now: float
) -> None:
    reason = (
        f"{label(members[0])} needs {cpus:g} CPU and {format_size(memory)} at once (its "
        f"tasks start together) but this machine can give at most {server.capacity.cpus:g} "
        f"CPU and {format_size(server.capacity.memory_bytes)}; lower the tasks' resources"
    )
    fail_group(server, members, reason, now)


def fail_group(server: Server, members: list[JobRecord], reason: str, now: float) -> None:
    for member in members:
        if member.status is JobStatus.PENDING:
            end_pending(server, member, JobStatus.FAILED, reason, ReasonCode.NEVER_FITS, now)


def end_pending(
    server: Server,
    record: JobRecord,
    status: JobStatus,
    reason: str,
    code: ReasonCode,
    now: float,
) -> None:
    from sky_mini.server.placement import end_unstarted

    log.info("job %d %s: %s", record.id, status.value, reason)
    end_unstarted(server, record, status, reason, code, now)


# --------------------------------------------------------------------------- ending


def stop_auxiliaries(server: Server, now: float) -> None:
    """Once every primary task of a group has ended, stop its auxiliary tasks when their
    ``termination_delay`` (counted from the last primary's end) has passed."""
    by_group: dict[int, JobRecord] = {}
    for record in server.jobs.values():
        gid = group_id(record)
        if gid is not None and record.group and not record.group.get("primary", True):
            by_group.setdefault(gid, record)
    for gid, sample in by_group.items():
        members = members_of(server, gid, int((sample.group or {}).get("size") or 1))
        primaries = [m for m in members if (m.group or {}).get("primary", True)]
        if not primaries or any(not p.status.is_terminal for p in primaries):
            continue
        ended_at = max(p.finished_at or now for p in primaries)
        for member in members:
            if member in primaries or member.status.is_terminal:
                continue
            delay = float((member.group or {}).get("termination_delay") or 0.0)
            if now < ended_at + delay:
                continue
            stop_auxiliary(server, member, delay, now)


def stop_auxiliary(server: Server, record: JobRecord, delay: float, now: float) -> None:
    why = f"every primary task of {label(record)} ended"
    if record.status is JobStatus.PENDING and record.executor is None:
        end_pending(
            server, record, JobStatus.CANCELLED, f"not run: {why}", ReasonCode.GROUP_DONE, now
        )
        return
    if record.reason == STOPPING_REASON:
        return  # already asked; the executor escalates to SIGKILL after the grace period
    record.reason = STOPPING_REASON
    server.save_job(record, durable=False)
    grace = server.settings.kill_grace_seconds
    log.info("job %d: %s (termination_delay %gs): stopping it", record.id, why, delay)
    if record.infra == "local":
        if server.backend is not None:
            server.backend.stop(record.id, "group", grace)
    else:
        server.remote.for_infra(record.infra).stop(record.id, "cancel", grace)


def relabel_stopped(record: JobRecord, data: dict[str, Any]) -> dict[str, Any]:
    """A cancel this module asked for (a cluster only knows "cancel") ends ``group_done``."""
    if record.reason == STOPPING_REASON and data.get("status") == JobStatus.CANCELLED.value:
        return {**data, "reason": STOPPED_REASON, "reason_code": ReasonCode.GROUP_DONE.value}
    return data
