"""The supervisor: one process, one tick loop of named steps.

``Server.tick`` runs, in order::

    wait_for_events -> handle_signals -> reap_children -> enforce_hook_timeouts
    -> handle_backend_events
    -> load_new_jobs -> handle_intents -> maintain_components -> reconcile_services
    -> dispatch_pending -> record_outcomes -> check_autostop -> write_status

Signal handlers only set flags (the wake-up fd makes ``select`` return); the loop does the
logging, killing and state changes. Only this process moves a job past PENDING.

The loop and its steps live here; the other parts of :class:`Server` are functions of the
server in their own modules, each behind a method of the same name: ``startup`` (lock, FIFO,
signals, host limits), ``restart`` (reconcile a dead predecessor), ``shutdown`` and
``publish`` (records, active index, status). ``admission`` holds :class:`Capacity`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import selectors
import signal
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from sky_mini import __version__, procs
from sky_mini.config import Settings
from sky_mini.models import JobRecord, JobStatus
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.server import (
    batch,
    components,
    groups,
    placement,
    publish,
    restart,
    retention,
    shutdown,
    startup,
)
from sky_mini.server.admission import Capacity, job_needs
from sky_mini.server.backends import RemoteBackends
from sky_mini.server.backends.base import Backend, BackendEvent
from sky_mini.server.gpus import GpuPool
from sky_mini.server.hooks import HookRunner
from sky_mini.server.startlog import START_LOG_MAX_BYTES, StartLog
from sky_mini.server.startup import AlreadyRunning, configure_logging
from sky_mini.state import Store

log = logging.getLogger("sky_mini.server")

TICK_SECONDS = 1.0
STATUS_HEARTBEAT_SECONDS = 5.0
SHUTDOWN_EXTRA_SECONDS = 5.0
JOB_RESERVATION_EPSILON = 1e-9
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def home_key(home: str) -> str:
    """A short stable key for a home: names its cgroups and job markers."""
    return hashlib.sha256(home.encode()).hexdigest()[:10]


class Server:
    def __init__(
        self,
        paths: Paths,
        settings: Settings,
        *,
        idle_minutes: float | None,
        executors: int | None = None,
        detached: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.idle_minutes = idle_minutes
        self.executors_override = executors if executors is not None else settings.executors
        self.detached = detached
        self.clock = clock
        self.store = Store(paths)
        self.instance_id = uuid.uuid4().hex[:12]
        self.key = home_key(paths.home)
        self.pid1 = os.getpid() == 1
        self.started_at = clock()
        self.jobs: dict[int, JobRecord] = {}
        self.seen_through = 0
        self.stop_requested: str | None = None
        self.stopping_since: float | None = None
        self.signals_seen: list[int] = []
        self.idle_since: float | None = clock()
        self.status_dirty = True
        self.last_status_write = 0.0
        self.last_active_write = 0.0
        self.unsaved_waits: set[int] = set()  # waiting reasons not yet worth a write
        self.active_dirty = True
        self.last_prune = 0.0
        self.scan_cursor = (
            1  # next finished record to check once after start (see retention.scan_history)
        )
        self.scan_end = 0
        self.warnings: list[str] = []
        self.unsaved: dict[int, JobRecord] = {}  # records a full disk stopped us saving
        self.unrecorded: dict[int, JobRecord] = {}  # ended, not yet durable; record_outcomes
        self.unrecorded_since = 0.0  # when the oldest of them ended
        self.unwritten_starts: list[JobRecord] = []  # dispatched, no start-log line: likewise
        self.start_log = StartLog(paths.start_log)  # which jobs reached an executor (startlog)
        self.unwritten_runs: dict[int, float] = {}  # started: written at this time or never
        self.dispatch_due = False  # a recorded outcome may let a dependent job start
        self.lock_fd = -1
        self.wake_fds: tuple[int, int] = (-1, -1)
        self.signal_fds: tuple[int, int] = (-1, -1)
        self.selector = selectors.DefaultSelector()
        self.backend: Backend | None = None
        self.capacity = Capacity(cpus=1.0, memory_bytes=1)
        self.gpu_pool = GpuPool([])
        self.gpu_assignments: dict[int, list[int]] = {}
        self.details: dict[str, Any] = {}
        # Set by configure_host (startup): the cgroup capabilities (None when off), how job
        # memory is limited, and the pool sizing (sky_mini.resources).
        self.cgroup_caps: Any = None
        self.memory_mechanism = "watchdog"
        self.pool: Any = None
        self.services: Any = None  # sky_mini.services.supervisor.ServicesSupervisor
        self.http: Any = None  # sky_mini.server.http_component.HttpSupervisor (--http)
        self.remote = RemoteBackends(paths.home, self.key, settings)  # Slurm, on first use
        self.hooks = HookRunner(
            on_failure=settings.hook_on_failure,
            on_finish=settings.hook_on_finish,
            timeout=settings.hook_timeout_seconds,
            log_path=paths.hooks_log,
            marker_prefix=f"{self.key}:{self.instance_id}",
            detach="hook_detach" not in settings.disabled,
        )

    # -- startup (sky_mini.server.startup) ----------------------------------------------

    def acquire_server_lock(self) -> None:
        startup.acquire_server_lock(self)

    def open_wake_fifo(self) -> None:
        startup.open_wake_fifo(self)

    def install_signal_handlers(self) -> None:
        startup.install_signal_handlers(self)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals_seen.append(signum)  # only record: the loop acts (handle_signals)

    def configure_host(self) -> None:
        startup.configure_host(self)

    def prepare(self) -> None:
        """Everything before the first tick; raises AlreadyRunning if another server runs."""
        ensure_dirs(self.paths)
        self.acquire_server_lock()
        self.configure_host()
        self.open_wake_fifo()
        self.install_signal_handlers()
        components.create_backend(self)
        self.reconcile_previous_instance()
        self.start_log.empty()  # the previous server's starts are reconciled
        components.start_backend(self)
        self.load_new_jobs()
        components.start_services(self)
        components.start_http(self)
        self.write_status(force=True)
        log.info(
            "sky-mini %s serving (pid %d, home %s, %d job executor(s))",
            __version__,
            os.getpid(),
            self.paths.home,
            len(self.backend_components()),
        )

    def forget_fd(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)

    def maintain_http(self, now: float) -> None:
        if self.http is not None and self.http.maintain(now):
            self.status_dirty = True

    def reserve_gpus(self, record: JobRecord) -> bool:
        return placement.reserve_gpus(self, record)

    def release_job_extras(self, job_id: int, *, final: bool = True) -> None:
        placement.release_job_extras(self, job_id, final=final)

    def backend_components(self) -> list[dict[str, Any]]:
        local = self.backend.components() if self.backend is not None else []
        return local + self.remote.components()

    def adopt_remote(self, record: JobRecord) -> None:
        """Re-attach to a job on a cluster; one that never reached it is PENDING again."""
        record.instance_id = self.instance_id
        self.jobs[record.id] = record
        if not self.remote.for_infra(record.infra).adopt(record):
            record.status, record.executor, record.slurm_job_id = JobStatus.PENDING, None, None
        self.save_job(record)
        log.info("job %d on %s re-attached (%s)", record.id, record.infra, record.status.value)

    # -- restart (sky_mini.server.restart) ----------------------------------------------

    def reconcile_previous_instance(self) -> None:
        restart.reconcile_previous_instance(self)

    def reattach_jobs(self, records: list[JobRecord]) -> list[int]:
        return restart.reattach_jobs(self, records)

    def unfinished_job_ids(self) -> tuple[list[int], int]:
        return restart.unfinished_job_ids(self)

    # -- the loop ----------------------------------------------------------------------

    def serve(self) -> int:
        self.prepare()
        try:
            while not self.tick():
                pass
        finally:
            self.cleanup()
        log.info("server stopped")
        if self.stop_requested == "idle" and self.detached and self.work_arrived():
            shutdown.spawn_successor(self)
        return 0

    def work_arrived(self) -> bool:
        """Did a job arrive while an idle stop was under way? (its CLI saw us still up)"""
        if any(r.status is JobStatus.PENDING for r in self.jobs.values()):
            return True
        for job_id in range(self.seen_through + 1, self.store.next_id()):
            record = self.store.load_job(job_id)
            if record is not None and record.status is JobStatus.PENDING:
                return True
        return False

    def tick(self) -> bool:
        """One pass of the loop. Returns True when the server should exit."""
        self.wait_for_events(self.next_timeout())
        now = self.clock()
        self.handle_signals()
        self.reap_children()
        self.hooks.enforce_timeouts(now)
        self.handle_backend_events(now)
        groups.stop_auxiliaries(self, now)
        self.load_new_jobs()
        self.handle_intents(now)
        self.maintain_components()
        self.reconcile_services(now)
        self.maintain_http(now)
        self.dispatch_pending(now)
        self.record_outcomes(now)
        self.trim_start_log()
        self.check_autostop(now)
        retention.prune_history(self, now)
        retention.scan_history(self)
        self.retry_unsaved_jobs()
        self.write_active_index()
        self.write_status()
        return self.shutdown_complete(now)

    def next_timeout(self) -> float:
        if self.dispatch_due:
            return 0.0
        if self.stop_requested is not None:
            return 0.1
        timeout = TICK_SECONDS
        if self.status_dirty or self.active_dirty:  # a held-back write is due soon
            last = min(self.last_status_write, self.last_active_write)
            timeout = last + publish.STATUS_MIN_INTERVAL_SECONDS - self.clock()
        if self.unwritten_runs:  # a start's record is due (publish.write_due_starts)
            timeout = min(timeout, min(self.unwritten_runs.values()) - self.clock())
        if self.unrecorded:  # outcomes held for a fuller pass of fsyncs (record_outcomes)
            due = self.unrecorded_since + publish.OUTCOME_BATCH_SECONDS
            timeout = min(timeout, due - self.clock())
        return min(TICK_SECONDS, max(0.0, timeout))

    def wait_for_events(self, timeout: float) -> None:
        components.register_child_sentinels(self)
        try:
            ready = self.selector.select(timeout)
        except InterruptedError:
            return
        for key, _ in ready:
            if key.data in ("wake", "signal"):
                with contextlib.suppress(BlockingIOError, OSError):
                    while os.read(key.fd, 4096):
                        pass

    def handle_signals(self) -> None:
        while self.signals_seen:
            signum = self.signals_seen.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                name = signal.Signals(signum).name
                if self.stop_requested is None:
                    log.info("received %s: shutting down gracefully", name)
                    self.initiate_shutdown(f"signal {name}")
                elif signum == signal.SIGINT:
                    log.warning("second %s: killing every job now", name)
                    self.stopping_since = -1e18  # forces the escalation on this tick
            elif signum == signal.SIGHUP:
                log.info("received SIGHUP: ignored (use 'sky-mini api stop' to stop)")

    def reap_children(self) -> None:
        """Reap every exited child: executors, the controller, and adopted orphans.

        As PID 1 or a subreaper, orphaned descendants become our children; reaping them all
        (``waitid(P_ALL)``, see ``tied.reap_children``) is what keeps a container free of
        zombies. A tied child's ``Process.sentinel`` in the selector wakes the loop at once.
        """
        from sky_mini.server import tied

        # "reap" off (test-only negative control): only our own tied children are reaped.
        orphans = "reap" not in self.settings.disabled
        reaped = tied.reap_children(self.forget_fd, orphans=orphans)
        if not orphans:
            reaped += procs.reap_pids(self.hooks.pids())
        for pid, status in reaped:
            if self.hooks.child_exited(pid, status):
                continue
            if self.backend is not None:
                for event in self.backend.child_exited(pid, status):
                    self.apply_event(event, self.clock())
            if self.services is not None:
                self.services.child_exited(pid, status)
            if self.http is not None:
                self.http.child_exited(pid, status, self.clock())

    def handle_backend_events(self, now: float) -> None:
        if self.backend is None:
            return
        events = [*self.backend.poll(), *self.remote.poll()]
        # A job that started and finished within one poll gets one (durable) write, not two.
        finished = {e.job_id for e in events if e.kind == "finished"}
        for event in events:
            self.apply_event(event, now, save=event.job_id not in finished)

    def apply_event(self, event: BackendEvent, now: float, *, save: bool = True) -> None:
        record = self.jobs.get(event.job_id)
        if record is None:
            return
        data = event.data
        if data.get("slurm_job_id"):
            record.slurm_job_id = str(data["slurm_job_id"])
        if event.kind in ("pending", "submitted"):  # a cluster's queue: still PENDING here
            record.reason = data.get("reason", record.reason)
            record.executor = data.get("executor", record.executor)
            self.save_job(record, durable=event.kind == "submitted")
        elif event.kind == "unsubmitted":  # never reached the cluster: dispatched again
            record.executor, record.reason = None, data.get("reason")
            self.save_job(record, durable=False)
        elif event.kind == "started":
            record.status = JobStatus.RUNNING if data.get("phase") == "run" else JobStatus.STARTING
            record.started_at = record.started_at or data.get("started_at") or now
            record.pid = data.get("pid")
            record.pgid = data.get("pgid")
            record.pid_create_time = data.get("create_time")
            record.cgroup_paths = list(data.get("cgroup_paths") or [])
            record.memory_mechanism = data.get("memory_mechanism")
            record.executor = data.get("executor")
            record.reason = None
            if save:
                publish.defer_start_write(self, record, now)
        elif event.kind == "finished":
            self.unwritten_runs.pop(record.id, None)  # this end's write carries the start
            data = groups.relabel_stopped(record, data)
            status = JobStatus(data.get("status", JobStatus.FAILED.value))
            record.finish(
                status,
                now=now,
                reason=data.get("reason"),
                reason_code=data.get("reason_code"),
                exit_code=data.get("exit_code"),
            )
            if data.get("peak_memory_bytes"):
                record.peak_memory_bytes = int(data["peak_memory_bytes"])
            record.started_at = record.started_at or data.get("started_at") or now
            log.info(
                "job %d %s%s",
                record.id,
                status.value,
                f": {record.reason}" if record.reason else "",
            )
            self.capacity.release(record.id)
            self.release_job_extras(record.id, final=False)
            if not self.end_attempt(record, now, defer=True):
                del self.jobs[record.id]
            self.active_dirty = True
        self.status_dirty = True

    def end_attempt(self, record: JobRecord, now: float, *, defer: bool = False) -> bool:
        """Record the attempt that just ended; True when it is queued again (``--retries``),
        else the job is over and its hooks run. Saves the record either way (``defer``: a
        job outside a group after this tick's dispatch, ``publish.record_outcomes``)."""
        batch.close_attempt(record)
        if batch.should_retry(record) and self.stop_requested is None:
            delay = batch.requeue_for_retry(
                record,
                now,
                base=self.settings.retry_backoff_seconds,
                cap=self.settings.retry_backoff_max_seconds,
            )
            self.save_job(record)
            log.info("job %d: %s, in %gs", record.id, record.reason, delay)
            return True
        if defer and not record.group:
            if not self.unrecorded:
                self.unrecorded_since = now
            self.unrecorded[record.id] = record
            return False
        self.save_job(record)
        self.release_job_extras(record.id)
        self.hooks.job_ended(record, now)
        return False

    def load_new_jobs(self) -> None:
        """Pick up records clients created since the last look (IDs are dense)."""
        next_id = self.store.next_id()
        for job_id in range(self.seen_through + 1, next_id):
            self.adopt_job(job_id)
        self.seen_through = max(self.seen_through, next_id - 1)

    def adopt_job(self, job_id: int) -> None:
        if job_id in self.jobs:
            return
        record = self.store.load_job(job_id)
        if record is not None and record.status is JobStatus.PENDING:
            record.instance_id = self.instance_id
            self.jobs[job_id] = record
            self.active_dirty = True
            self.status_dirty = True

    def handle_intents(self, now: float) -> None:
        placement.handle_intents(self, now)

    def maintain_components(self) -> None:
        if self.backend is None or self.stop_requested is not None:
            return
        for note in self.backend.maintain():
            log.warning("%s", note)
            self.status_dirty = True
        components.register_backend_fds(self)

    def reconcile_services(self, now: float) -> None:
        if self.services is not None and self.services.reconcile(now):
            self.status_dirty = True

    def dispatch_pending(self, now: float) -> None:
        """Start every PENDING job whose reservation fits, oldest first."""
        self.dispatch_due = False
        if self.backend is None or self.stop_requested is not None:
            return
        gate = batch.build_gate(self.settings.queues, self.paths.paused, self.jobs.values())
        for job_id in sorted(self.jobs):
            record = self.jobs.get(job_id)  # a job group's step may have ended its other jobs
            if record is None or record.status is not JobStatus.PENDING:
                continue
            if record.after and not placement.dependencies_allow(self, record, now):
                continue
            held = batch.hold_reason(record, now, gate)
            if held is not None:
                self.note_waiting(record, held, now)
                continue
            if record.group and groups.dispatch_group(self, record, now, gate):
                continue
            if record.infra != "local":
                self.launch_remote(record)
                continue
            cpus, memory = job_needs(record, self.capacity.cpus)
            if not self.capacity.fits_ever(cpus, memory):
                placement.fail_never_fits(self, record, cpus, memory, now)
                continue
            if self.backend.free_slots() <= 0:
                self.note_waiting(record, "waiting for a free executor: all are busy", now)
                continue
            if not self.capacity.fits_now(cpus, memory):
                self.note_waiting(record, self.capacity.waiting_reason(cpus, memory), now)
                continue
            if not self.reserve_gpus(record):
                continue
            self.start_local(record, cpus, memory, now, gate)

    def start_local(
        self, record: JobRecord, cpus: float, memory: int, now: float, gate: batch.QueueGate
    ) -> None:
        """Reserve and hand a job to a free executor (its GPUs are already reserved)."""
        if self.backend is None:
            return
        self.capacity.reserve(record.id, cpus, memory)
        self.unsaved_waits.discard(record.id)
        record.status = JobStatus.STARTING
        record.reason = None
        record.retry_at = None
        gate.note_started(record)
        if not self.start_log.note(record.id, record.attempt):  # before the executor has it
            self.unwritten_starts.append(record)  # no line: its record says STARTING instead
        record.executor = self.backend.launch(record, placement.job_payload(self, record))
        record.started_at = now
        self.status_dirty = True

    def events_waiting(self) -> bool:
        """Something the loop waits on is readable now (an executor's news, a wake-up)."""
        try:
            return bool(self.selector.select(0))
        except (InterruptedError, OSError, ValueError):
            return False

    def trim_start_log(self) -> None:
        """Empty a long start log once no local job is between dispatch and its end."""
        if self.start_log.size > START_LOG_MAX_BYTES:
            self.start_log.trim(
                any(r.infra == "local" and r.status.is_active for r in self.jobs.values())
            )

    def launch_remote(self, record: JobRecord) -> None:
        placement.launch_remote(self, record)

    def note_waiting(self, record: JobRecord, reason: str, now: float | None = None) -> None:
        publish.note_waiting(self, record, reason, self.clock() if now is None else now)

    def has_work(self) -> bool:
        if self.jobs or self.hooks.running:
            return True
        return self.services is not None and self.services.has_work()

    def check_autostop(self, now: float) -> None:
        if self.has_work():
            self.idle_since = None
            return
        if self.idle_since is None:
            self.idle_since = now
        if (
            self.idle_minutes is not None
            and self.stop_requested is None
            and now - self.idle_since >= self.idle_minutes * 60
        ):
            log.info("idle for %g minute(s) with no work: stopping", self.idle_minutes)
            self.initiate_shutdown("idle")

    # -- shutdown (sky_mini.server.shutdown) --------------------------------------------

    def initiate_shutdown(self, why: str) -> None:
        shutdown.initiate_shutdown(self, why)

    def shutdown_complete(self, now: float) -> bool:
        return shutdown.shutdown_complete(self, now)

    def cleanup(self) -> None:
        shutdown.cleanup(self)

    # -- publish (sky_mini.server.publish) ----------------------------------------------

    def save_job(self, record: JobRecord, *, durable: bool = True) -> None:
        publish.save_job(self, record, durable=durable)

    def record_outcomes(self, now: float) -> None:
        publish.record_outcomes(self, now)

    def retry_unsaved_jobs(self) -> None:
        publish.retry_unsaved_jobs(self)

    def write_active_index(self, *, force: bool = False) -> None:
        publish.write_active_index(self, force=force)

    def write_status(self, *, force: bool = False, state: str | None = None) -> None:
        publish.write_status(self, force=force, state=state)


def run_server(
    paths: Paths,
    settings: Settings,
    *,
    idle_minutes: float | None,
    executors: int | None,
    detached: bool,
) -> int:
    """``sky-mini serve --foreground``: returns the process exit code."""
    procs.ensure_title_room(paths.home)
    ensure_dirs(paths)
    configure_logging(paths, detached=detached)
    procs.set_title("server", paths.home)
    server = Server(
        paths, settings, idle_minutes=idle_minutes, executors=executors, detached=detached
    )
    try:
        return server.serve()
    except AlreadyRunning:
        pid = read_lock_pid(paths)
        print(
            f"sky-mini: a server is already running for {paths.home}"
            + (f" (pid {pid})" if pid else ""),
            file=sys.stderr,
        )
        return 0


def read_lock_pid(paths: Paths) -> int | None:
    with contextlib.suppress(OSError, ValueError), open(paths.server_lock) as handle:
        return int(handle.read().strip() or 0) or None
    return None
