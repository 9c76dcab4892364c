"""``SlurmBackend``: jobs handed to a Slurm cluster, behind the same seam as local executors.

- ``launch``: record a *submitting* intent (durably) in ``slurm/job-<id>.state.json``, then
  ``sbatch``; the answer is recorded next. The Slurm job name carries the home key and the
  job ID, so a server that died between the two finds the job by name instead of submitting
  it again (:meth:`adopt`).
- ``poll``: one ``squeue`` for every tracked job per poll, on a backing-off schedule; jobs
  missing from it get their outcome from the wrapper's exit record (Slurm forgets finished
  jobs after ``MinJobAge``), else after ``LOST_GRACE_SECONDS`` ``KILLED supervisor_lost``.
- Every tool call runs in the backend's own thread (:mod:`.worker`): ``launch`` and
  ``stop`` queue a command and return, ``poll`` hands back what the thread produced, so a
  controller that takes 18 s to fail never holds up the tick loop. ``SKY_MINI_DISABLE=
  slurm_worker`` (test-only negative control) runs them inline in the loop, as before.
- ``stop``: cancel only (work handed to Slurm belongs to Slurm: a server shutdown leaves it
  running). Record the intent, then ``scancel --batch --signal=TERM`` so the wrapper's
  TERM → grace → KILL runs, with a plain ``scancel`` as the backstop.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sky_mini.models import JobRecord, JobStatus, ReasonCode
from sky_mini.server.backends.base import BackendEvent
from sky_mini.server.backends.slurm import states, submit
from sky_mini.server.backends.slurm.poller import PollSchedule
from sky_mini.server.backends.slurm.tools import QueryFailed, SlurmTools
from sky_mini.server.backends.slurm.worker import DeferredLog, Worker
from sky_mini.state import atomic_write_json, read_json

log = logging.getLogger("sky_mini.server.slurm")

LOST_GRACE_SECONDS = 60.0  # absent from Slurm, no exit record: then supervisor_lost
CANCEL_BACKSTOP_EXTRA_SECONDS = 5.0
PROBE_INTERVAL_SECONDS = 30.0
SUBMIT_RETRY_SECONDS = 15.0  # after sbatch could not reach the controller
UNREACHABLE_MARKERS = ("Unable to contact slurm controller", "Socket timed out", "Zero Bytes")
WAITING_FOR_CONTROLLER = "waiting for the Slurm controller (sbatch cannot reach it); see api status"
CANCELLED_BEFORE_START = {
    "status": JobStatus.CANCELLED.value,
    "reason": "cancelled by user before it started",
    "reason_code": ReasonCode.CANCELLED.value,
    "exit_code": None,
}
FAULT_ENV = "SKY_MINI_SLURM_FAULT"  # test only: "after_sbatch" exits the server right there


@dataclass
class Tracked:
    """A job this backend is responsible for until it has a terminal status."""

    job_id: int
    infra: str
    files: submit.JobFiles
    memory_bytes: int | None
    timeout_seconds: float | None
    slurm_job_id: str | None = None
    last_state: str | None = None
    last_reason: str | None = None
    running: bool = False
    cancel_requested: bool = False
    cancel_backstop_at: float | None = None
    absent_since: float | None = None
    lookup_by_name: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class SlurmBackend:
    name = "slurm"

    def __init__(
        self,
        home: str,
        key: str,
        *,
        options: submit.SlurmOptions,
        grace_seconds: float,
        disabled: frozenset[str] = frozenset(),
        tools: SlurmTools | None = None,
        clock: Callable[[], float] = time.time,
        threaded: bool = True,
    ) -> None:
        self.home = home
        self.key = key
        self.options = options
        self.grace = grace_seconds
        self.disabled = disabled
        self.tools = tools or SlurmTools()
        self.clock = clock
        self.dir = os.path.join(home, "slurm")
        self.wrapper_path = os.path.join(self.dir, "batch_wrapper.py")
        self.jobs: dict[int, Tracked] = {}
        self.events: list[BackendEvent] = []
        self.schedule = PollSchedule()
        self.polls = 0
        self.controller: dict[str, Any] = {"reachable": None}
        self.next_probe = 0.0
        self.submit_retry_at = 0.0
        self.log = DeferredLog(log)
        # Unthreaded (unit tests drive it step by step; "slurm_worker" disabled, the
        # negative control): every tool call runs in the caller, blocking the loop.
        self.inline = not threaded or "slurm_worker" in disabled
        self.lock = threading.Lock()  # guards commands and outbox (loop <-> worker)
        self.commands: list[tuple[Any, ...]] = []
        self.outbox: list[BackendEvent] = []
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.worker = Worker(self.work, self.log)
        self.unsubmitted: set[int] = set()  # sent back PENDING by the worker (not in jobs)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        source = os.path.join(os.path.dirname(__file__), "batch_wrapper.py")
        tmp = f"{self.wrapper_path}.tmp"
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o700)
        os.replace(tmp, self.wrapper_path)
        if self.inline:
            self.probe(self.clock())  # else the worker's first step probes

    def filenos(self) -> list[int]:
        """The worker's wake-up pipe: readable when it has events for the loop."""
        return [] if self.inline else [self.wake_r]

    def free_slots(self) -> int:
        """Slurm queues (its pending reason says why a job waits); none while sbatch cannot
        reach the controller, until the retry time."""
        return 0 if self.clock() < self.submit_retry_at else 1 << 30

    def child_exited(self, pid: int, status: int) -> list[BackendEvent]:
        return []

    def maintain(self) -> list[str]:
        return []

    def shutdown(self, grace: float) -> None:
        """Nothing: jobs handed to Slurm keep running; a restarted server re-attaches."""

    def is_stopped(self) -> bool:
        return True

    def has_unfinished(self) -> bool:
        return bool(self.jobs)

    # -- submit ----------------------------------------------------------------------

    def state_path(self, job_id: int) -> str:
        return os.path.join(self.dir, f"job-{job_id}.state.json")

    def write_state(self, tracked: Tracked, phase: str) -> None:
        atomic_write_json(
            self.state_path(tracked.job_id),
            {
                "phase": phase,
                "slurm_job_id": tracked.slurm_job_id,
                "job_name": submit.job_name(self.key, tracked.job_id),
                "cancel_requested": tracked.cancel_requested,
            },
            durable=True,
        )

    def track(self, job: JobRecord) -> Tracked:
        resources = job.task.get("resources") or {}
        memory = resources.get("memory_bytes")
        timeout = resources.get("timeout_seconds")
        tracked = Tracked(
            job_id=job.id,
            infra=job.infra,
            files=submit.JobFiles.for_log(job.log_path, self.dir, job.id),
            memory_bytes=int(memory) if memory else None,
            timeout_seconds=float(timeout) if timeout else None,
            slurm_job_id=job.slurm_job_id,
        )
        self.jobs[job.id] = tracked
        return tracked

    def launch(self, job: JobRecord, payload: dict[str, Any]) -> str:
        """Queue the submit for the worker (the answer comes back as a ``submitted``,
        ``unsubmitted`` or ``finished`` event); inline: submit now."""
        if self.inline:
            return self.submit(job, payload)
        self.enqueue(("launch", copy.copy(job), payload))
        return "slurm:submitting"

    def enqueue(self, command: tuple[Any, ...]) -> None:
        with self.lock:
            self.commands.append(command)
        self.worker.kick()

    def submit_command(self, job: JobRecord, payload: dict[str, Any]) -> None:
        where = self.submit(job, payload)
        self.unsubmitted.discard(job.id)
        if not where:
            self.unsubmitted.add(job.id)
            data: dict[str, Any] = {"reason": WAITING_FOR_CONTROLLER}
            self.events.append(BackendEvent("unsubmitted", job.id, data))
        elif job.slurm_job_id:
            data = {"slurm_job_id": job.slurm_job_id, "executor": where}
            self.events.append(BackendEvent("submitted", job.id, data))

    def submit(self, job: JobRecord, payload: dict[str, Any]) -> str:
        """sbatch one job. Returns where it runs, ``""`` if certainly not submitted (the
        controller is unreachable: it stays PENDING and is tried again)."""
        if self.clock() < self.submit_retry_at:
            return ""
        tracked = self.track(job)
        files = tracked.files
        task = job.task
        num_nodes = int(task.get("num_nodes") or 1)
        env = submit.build_job_env(
            dict(job.env or {}), dict(task.get("envs") or {}), job.id, num_nodes
        )
        env.update(payload.get("secrets") or {})  # the env file is 0600 and gone with the job
        env_path = os.path.join(self.dir, f"job-{job.id}.env.json")
        atomic_write_json(env_path, env, durable=False)
        spec = submit.build_wrapper_spec(
            job_id=job.id, task=task, files=files, grace_seconds=self.grace
        )
        atomic_write_json(files.spec_path, spec, durable=False)
        script = submit.batch_script(self.wrapper_path, files.spec_path, env_path)
        with open(files.script_path, "w") as handle:
            handle.write(script)
        for stale in (files.exit_path, files.started_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        argv = submit.build_sbatch_argv(
            job_id=job.id,
            home_key=self.key,
            task=task,
            infra=job.infra,
            files=files,
            options=self.options,
            grace_seconds=self.grace,
        )
        self.write_state(tracked, "submitting")  # before sbatch: a crash here is found by name
        result = self.tools.run(argv)
        if os.environ.get(FAULT_ENV) == "after_sbatch":
            log.warning("test fault %s=after_sbatch: exiting before recording", FAULT_ENV)
            os._exit(70)
        slurm_id = submit.parse_sbatch_answer(result.stdout) if result.ok else None
        if slurm_id is None:
            if result.returncode == 124:  # no answer: it may have been submitted
                tracked.lookup_by_name = True
                return "slurm:submitting"
            if any(marker in result.stderr for marker in UNREACHABLE_MARKERS):
                # Certainly not submitted: stays PENDING here, tried again later.
                self.forget(tracked)  # also its environment file (it may hold secrets)
                self.submit_retry_at = self.clock() + SUBMIT_RETRY_SECONDS
                self.note_unreachable(result.message())
                self.next_probe = self.submit_retry_at
                return ""
            self.refuse(tracked, result.message())
            return "slurm:refused"
        tracked.slurm_job_id = slurm_id
        job.slurm_job_id = slurm_id
        self.write_state(tracked, "submitted")
        self.schedule.hurry(self.clock())
        self.log.info("job %d submitted to Slurm as job %s", job.id, slurm_id)
        return f"slurm:{slurm_id}"

    def forget(self, tracked: Tracked) -> None:
        """The job is over for sky-mini: drop it and its Slurm-side files."""
        self.jobs.pop(tracked.job_id, None)
        files = tracked.files
        env_path = os.path.join(self.dir, f"job-{tracked.job_id}.env.json")
        for path in (self.state_path(tracked.job_id), env_path, files.spec_path, files.script_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the environment file may hold secrets: gone with the job

    def refuse(self, tracked: Tracked, message: str) -> None:
        self.forget(tracked)
        self.events.append(
            BackendEvent(
                "finished",
                tracked.job_id,
                {
                    "status": JobStatus.FAILED_SETUP.value,
                    "reason": f"sbatch refused the job: {message}",
                    "reason_code": ReasonCode.CANNOT_START.value,
                    "exit_code": None,
                },
            )
        )

    # -- restart ---------------------------------------------------------------------

    def adopt(self, job: JobRecord) -> bool:
        """Re-attach to a job a previous server handed to Slurm. Returns False when it
        never reached Slurm (the caller submits it as new)."""
        tracked = self.track(job)
        tracked.running = job.status.is_active
        tracked.last_reason = job.reason
        saved = read_json(self.state_path(job.id))
        if not job.slurm_job_id and not isinstance(saved, dict):
            self.jobs.pop(job.id, None)
            return False  # no submitting intent was ever recorded: sbatch never ran
        if isinstance(saved, dict):
            tracked.cancel_requested = bool(saved.get("cancel_requested"))
            if not tracked.slurm_job_id and saved.get("slurm_job_id"):
                tracked.slurm_job_id = str(saved["slurm_job_id"])
        if tracked.slurm_job_id:
            job.slurm_job_id = tracked.slurm_job_id
            return True
        if "slurm_lookup" not in self.disabled:  # test-only negative control
            name = submit.job_name(self.key, job.id)
            try:
                found = self.tools.squeue_by_name([name])
            except QueryFailed as exc:
                self.log.warning("cannot look job %d up in Slurm (%s); will retry", job.id, exc)
                tracked.lookup_by_name = True
                return True
            if found:
                slurm_id = sorted(found, key=int)[-1]
                tracked.slurm_job_id = job.slurm_job_id = slurm_id
                self.write_state(tracked, "submitted")
                self.log.info(
                    "job %d found in Slurm by name as job %s (re-attached)", job.id, slurm_id
                )
                return True
            if os.path.exists(tracked.files.started_path):
                return True  # it ran and Slurm forgot it: the exit record decides
        self.jobs.pop(job.id, None)
        return False

    # -- cancel ----------------------------------------------------------------------

    def stop(self, job_id: int, reason: str, grace: float) -> None:
        if reason != "cancel":
            return  # a shutdown leaves Slurm's work running
        if self.inline:
            self.cancel(job_id)
        else:
            self.enqueue(("cancel", job_id))

    def cancel(self, job_id: int) -> None:
        tracked = self.jobs.get(job_id)
        if tracked is None:
            if job_id in self.unsubmitted:  # cancelled while its sbatch failed: never ran
                self.unsubmitted.discard(job_id)
                self.events.append(BackendEvent("finished", job_id, CANCELLED_BEFORE_START))
            return
        now = self.clock()
        first = not tracked.cancel_requested
        tracked.cancel_requested = True
        self.write_state(tracked, "submitted" if tracked.slurm_job_id else "submitting")
        if tracked.slurm_job_id is None:
            return  # found by name at the next poll, then cancelled
        if first:
            self.send_cancel(tracked, now)
        self.schedule.hurry(now)

    def send_cancel(self, tracked: Tracked, now: float) -> None:
        assert tracked.slurm_job_id is not None
        if tracked.running:
            result = self.tools.run(["scancel", "--batch", "--signal=TERM", tracked.slurm_job_id])
            tracked.cancel_backstop_at = now + self.grace + CANCEL_BACKSTOP_EXTRA_SECONDS
        else:
            result = self.tools.run(["scancel", tracked.slurm_job_id])
        if not result.ok:
            self.log.warning("scancel %s: %s", tracked.slurm_job_id, result.message())

    # -- poll ------------------------------------------------------------------------

    def poll(self) -> list[BackendEvent]:
        """What the worker produced since the last call (inline: one round of I/O now)."""
        if self.inline:
            self.work()
        elif not self.worker.started:
            self.worker.start()  # first poll: after restart's adopt, in the loop
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass
        self.log.flush()
        with self.lock:
            events, self.outbox = self.outbox, []
        return events

    def work(self) -> float:
        """One round of Slurm I/O (the worker thread; inline, the loop): queued submits and
        cancels, then the poll and the probe when due. Returns seconds until one is due."""
        with self.lock:
            commands, self.commands = self.commands, []
        for command in commands:
            if command[0] == "launch":
                self.submit_command(command[1], command[2])
            elif command[0] == "cancel":
                self.cancel(command[1])
        now = self.clock()
        if self.jobs and self.schedule.due(now):
            self.poll_once(now)
        if now >= self.next_probe:
            self.probe(now)
        if self.events or self.log.lines:
            with self.lock:
                self.outbox.extend(self.events)
            self.events = []
            if not self.inline:
                with contextlib.suppress(BlockingIOError):
                    os.write(self.wake_w, b"\0")
        due = min(self.next_probe, self.schedule.next_at if self.jobs else math.inf)
        return due - self.clock()

    def poll_once(self, now: float) -> None:
        self.resolve_names()
        ids = sorted({t.slurm_job_id for t in self.jobs.values() if t.slurm_job_id}, key=int)
        try:
            reported = self.tools.squeue(ids)
        except QueryFailed as exc:
            self.schedule.failed(now)
            self.note_unreachable(str(exc))
            self.log.warning(
                "squeue failed (%s); no job changes, next try in %gs", exc, self.schedule.interval
            )
            return
        self.controller["reachable"] = True
        self.polls += 1
        changed = False
        for tracked in list(self.jobs.values()):
            if tracked.slurm_job_id is None:
                continue
            changed |= self.apply(tracked, reported.get(tracked.slurm_job_id), now)
        self.schedule.polled(now, changed=changed)

    def resolve_names(self) -> None:
        waiting = [t for t in self.jobs.values() if t.lookup_by_name and not t.slurm_job_id]
        if not waiting:
            return
        names = {submit.job_name(self.key, t.job_id): t for t in waiting}
        try:
            found = self.tools.squeue_by_name(list(names))
        except QueryFailed:
            return
        for slurm_job in sorted(found.values(), key=lambda j: int(j.job_id)):
            tracked = names.get(slurm_job.name or "")
            if tracked is not None:
                tracked.slurm_job_id = slurm_job.job_id
                tracked.lookup_by_name = False
                self.write_state(tracked, "submitted")
                self.events.append(
                    BackendEvent("submitted", tracked.job_id, {"slurm_job_id": slurm_job.job_id})
                )
                if tracked.cancel_requested:
                    self.send_cancel(tracked, self.clock())

    def apply(self, tracked: Tracked, job: states.SlurmJob | None, now: float) -> bool:
        exit_record = None
        if job is None or job.state in states.FINISHED_STATES:
            record = read_json(tracked.files.exit_path)
            exit_record = record if isinstance(record, dict) else None
        if exit_record is not None and exit_record.get("peak_memory_bytes"):
            tracked.extra["peak_memory_bytes"] = exit_record["peak_memory_bytes"]
        if job is None and exit_record is None and tracked.slurm_job_id:
            job = self.look_closer(tracked)
        ctx = states.JobContext(
            job_id=tracked.job_id,
            memory_bytes=tracked.memory_bytes,
            timeout_seconds=tracked.timeout_seconds,
            cancel_requested=tracked.cancel_requested,
            exit_record=exit_record,
        )
        decision = states.decide(job, ctx)
        if decision.note:
            self.log.warning(
                "job %d (Slurm %s): %s", tracked.job_id, tracked.slurm_job_id, decision.note
            )
        if job is None and decision.kind == "none":
            return self.note_absent(tracked, now)
        tracked.absent_since = None
        if job is not None and job.start_time:
            tracked.extra["started_at"] = job.start_time
        if decision.kind == "pending":
            if decision.reason != tracked.last_reason:
                tracked.last_reason = decision.reason
                self.events.append(
                    BackendEvent("pending", tracked.job_id, {"reason": decision.reason})
                )
                return True
            return False
        if decision.kind == "running":
            if tracked.cancel_backstop_at is not None and now >= tracked.cancel_backstop_at:
                self.log.warning(
                    "job %d still runs after its cancel's grace: scancel", tracked.job_id
                )
                self.tools.run(["scancel", str(tracked.slurm_job_id)])
                tracked.cancel_backstop_at = None
            # The wrapper says whether setup or run is under way (STARTING vs RUNNING).
            started = read_json(tracked.files.started_path)
            phase = started.get("phase") if isinstance(started, dict) else None
            phase = phase if phase in ("setup", "run") else "run"
            if not tracked.running or tracked.extra.get("phase") != phase:
                tracked.running = True
                tracked.extra["phase"] = phase
                data = {"phase": phase, "executor": f"slurm:{tracked.slurm_job_id}"}
                if job is not None and job.start_time:
                    data["started_at"] = job.start_time  # Slurm's own, not when we looked
                self.events.append(BackendEvent("started", tracked.job_id, data))
                return True
            return False
        if decision.kind == "refused":
            self.log.warning(
                "job %d: %s; scancel %s", tracked.job_id, decision.reason, tracked.slurm_job_id
            )
            self.tools.run(["scancel", str(tracked.slurm_job_id)])
            self.finish(tracked, decision)
            return True
        if decision.kind == "finished":
            self.finish(tracked, decision)
            return True
        return False

    def look_closer(self, tracked: Tracked) -> states.SlurmJob | None:
        """Absent from squeue: ask ``scontrol`` once per absence (a newly finished job)."""
        if tracked.absent_since is not None:
            return None
        try:
            return self.tools.scontrol_job(str(tracked.slurm_job_id))
        except QueryFailed:
            return None

    def note_absent(self, tracked: Tracked, now: float) -> bool:
        if tracked.absent_since is None:
            tracked.absent_since = now
            return False
        if now - tracked.absent_since < LOST_GRACE_SECONDS:
            return False
        self.finish(
            tracked,
            states.Decision(
                "finished",
                JobStatus.KILLED,
                f"Slurm no longer knows job {tracked.slurm_job_id} and it left no exit record "
                f"(after {LOST_GRACE_SECONDS:g}s); its outcome is unknown — submit it again",
                ReasonCode.SUPERVISOR_LOST.value,
                None,
            ),
        )
        return True

    def finish(self, tracked: Tracked, decision: states.Decision) -> None:
        assert decision.status is not None
        self.forget(tracked)
        self.events.append(
            BackendEvent(
                "finished",
                tracked.job_id,
                {
                    "status": decision.status.value,
                    "reason": decision.reason,
                    "reason_code": decision.reason_code,
                    "exit_code": decision.exit_code,
                    "slurm_job_id": tracked.slurm_job_id,
                    "peak_memory_bytes": tracked.extra.get("peak_memory_bytes"),
                    "started_at": tracked.extra.get("started_at"),
                },
            )
        )

    # -- status ----------------------------------------------------------------------

    def note_unreachable(self, message: str) -> None:
        # A new dict, never updated in place: components() reads it from the loop.
        self.controller = {**self.controller, "reachable": False, "error": message}

    def probe(self, now: float) -> None:
        """Controller reachable? Its version, partitions and node states, for api status."""
        self.next_probe = now + PROBE_INTERVAL_SECONDS
        info = self.tools.controller_info(self.controller.get("version"))
        if isinstance(info, str):
            self.note_unreachable(info)
        else:
            self.controller = info

    def components(self) -> list[dict[str, Any]]:
        reachable = self.controller.get("reachable")
        return [
            {
                "name": "slurm",
                "kind": "slurm-controller",
                "pid": None,
                "state": "reachable" if reachable else "unreachable",
                "job_id": None,
                "started_at": None,
                "restarts": 0,
                "should_run": True,
                "healthy": bool(reachable),
                "jobs": len(self.jobs),
                "polls": self.polls,
                "poll_interval_seconds": round(self.schedule.interval, 2),
                "slurm": dict(self.controller),
                "note": f"the home {self.home} must be on a filesystem the compute nodes share",
            }
        ]
