"""What a job needs before it starts, and gives back when it ends: its dependencies
(``after``), its GPUs, its environment (envs, secrets, SkyPilot's variables), the verdict
for a job this machine can never run, the hand-over of a job to its cluster, and a cancel
a client asked for.

Functions of the server (``server`` is :class:`sky_mini.server.main.Server`), called from
``dispatch_pending`` and wherever a job ends.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from sky_mini import procs
from sky_mini.models import JobRecord, JobStatus, ReasonCode
from sky_mini.server.gpus import skypilot_env
from sky_mini.units import format_size

if TYPE_CHECKING:
    from sky_mini.server.main import Server

log = logging.getLogger("sky_mini.server")


def dependencies_allow(server: Server, record: JobRecord, now: float) -> bool:
    """``after`` gating: True to go on; else the job waits (reason noted) or was
    cancelled with ``dependency_failed``."""
    from sky_mini.server.deps import dependency_gate

    def lookup(job_id: int) -> JobRecord | None:
        return server.jobs.get(job_id) or server.store.load_job(job_id)

    gate = dependency_gate(record, lookup)
    if gate.action == "wait":
        server.note_waiting(record, gate.reason or "waiting")
        return False
    if gate.action == "cancel":
        reason = gate.reason or "a job it waited for did not succeed"
        log.info("job %d CANCELLED: %s", record.id, reason)
        end_unstarted(
            server, record, JobStatus.CANCELLED, reason, ReasonCode.DEPENDENCY_FAILED, now
        )
        return False
    return True


def reserve_gpus(server: Server, record: JobRecord) -> bool:
    """Take the job's GPUs from the pool (True), or note what it waits for (False)."""
    resources = record.task.get("resources") or {}
    count = float(resources.get("gpus") or 0.0)
    if count <= 0:
        return True
    wanted = resources.get("accelerator")
    indices = server.gpu_pool.pick(wanted, count)
    if indices is None:
        server.note_waiting(record, server.gpu_pool.waiting_reason(wanted, count))
        return False
    server.gpu_pool.reserve(record.id, indices, count)
    server.gpu_assignments[record.id] = indices
    return True


def release_job_extras(server: Server, job_id: int, *, final: bool = True) -> None:
    """What a job holds besides CPU/memory: its GPUs (after every attempt) and its
    secrets file (once the job is over: a retry needs it again)."""
    server.gpu_pool.release(job_id)
    server.gpu_assignments.pop(job_id, None)
    if final:
        from sky_mini.jobsecrets import discard_secrets

        discard_secrets(server.paths.job_secrets(job_id))


def job_payload(server: Server, record: JobRecord) -> dict[str, Any]:
    env = dict(record.env or os.environ)
    env.update(record.task.get("envs") or {})
    if record.task.get("secrets"):
        from sky_mini.jobsecrets import read_secrets

        env.update(read_secrets(server.paths.job_secrets(record.id)))
    env.update(skypilot_env(record, server.gpu_assignments.get(record.id), server.gpu_pool))
    env["SKY_MINI_JOB_ID"] = str(record.id)
    return {
        "id": record.id,
        "task": record.task,
        "log_path": record.log_path,
        "marker": procs.marker_for(f"{server.key}:{server.instance_id}", f"job-{record.id}"),
        "env": env,
    }


def fail_never_fits(
    server: Server, record: JobRecord, cpus: float, memory: int, now: float
) -> None:
    reason = (
        f"needs {cpus:g} CPU and {format_size(memory)} but this machine can give at most "
        f"{server.capacity.cpus:g} CPU and {format_size(server.capacity.memory_bytes)}; "
        "lower resources.cpus/resources.memory"
    )
    log.warning("job %d can never run here: %s", record.id, reason)
    end_unstarted(server, record, JobStatus.FAILED, reason, ReasonCode.NEVER_FITS, now)


def end_unstarted(
    server: Server,
    record: JobRecord,
    status: JobStatus,
    reason: str,
    code: ReasonCode,
    now: float,
) -> None:
    """End a job that never started (cancelled, a dependency failed, it can never fit):
    record it durably, give back what it held, forget it, and run its hooks."""
    record.finish(status, now=now, reason=reason, reason_code=code.value, exit_code=None)
    server.save_job(record)
    release_job_extras(server, record.id)
    server.jobs.pop(record.id, None)
    server.active_dirty = True
    server.status_dirty = True
    server.hooks.job_ended(record, now)


def launch_remote(server: Server, record: JobRecord) -> None:
    """Hand a job to its cluster once; its queue decides when it starts."""
    if record.executor is not None:
        return
    backend = server.remote.for_infra(record.infra)
    waiting = "waiting for the Slurm controller (sbatch cannot reach it); see api status"
    if backend.free_slots() <= 0:
        server.note_waiting(record, waiting)
        return
    secrets: dict[str, str] = {}
    if record.task.get("secrets"):
        from sky_mini.jobsecrets import read_secrets

        secrets = read_secrets(server.paths.job_secrets(record.id))
    where = backend.launch(record, {"secrets": secrets})
    if not where:
        server.note_waiting(record, waiting)
        return
    record.executor = where
    record.reason = "submitted to Slurm"
    server.save_job(record, durable=False)
    server.status_dirty = True


def handle_intents(server: Server, now: float) -> None:
    """Act on what clients asked for in ``intents/`` (today only ``cancel-<id>``)."""
    for kind, job_id in server.store.take_intents():
        if kind != "cancel":
            log.warning("ignoring unknown intent %s-%d", kind, job_id)
            continue
        record = server.jobs.get(job_id)
        if record is None:
            continue
        if record.infra != "local" and record.executor is not None:
            log.info("cancelling job %d on %s", job_id, record.infra)
            server.remote.for_infra(record.infra).stop(
                job_id, "cancel", server.settings.kill_grace_seconds
            )
        elif record.status is JobStatus.PENDING:
            reason = "cancelled by user before it started"
            end_unstarted(server, record, JobStatus.CANCELLED, reason, ReasonCode.CANCELLED, now)
            log.info("job %d CANCELLED before it started", job_id)
        elif server.backend is not None:
            log.info(
                "cancelling job %d (SIGTERM, SIGKILL after %gs)",
                job_id,
                server.settings.kill_grace_seconds,
            )
            server.backend.stop(job_id, "cancel", server.settings.kill_grace_seconds)
