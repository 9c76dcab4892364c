"""The supervisor: one process, one tick loop of named steps.

``Server.tick`` runs, in order::

    wait_for_events -> handle_signals -> reap_children -> enforce_hook_timeouts
    -> handle_backend_events
    -> load_new_jobs -> handle_intents -> maintain_components -> reconcile_services
    -> dispatch_pending -> check_autostop -> write_status

Signal handlers only set flags (the wake-up fd makes ``select`` return); the loop does the
logging, killing and state changes. Only this process moves a job past PENDING.
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
from dataclasses import dataclass, field
from typing import Any

from sky_mini import __version__, procs
from sky_mini.config import Settings
from sky_mini.models import JobRecord, JobStatus, ReasonCode
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.server import batch
from sky_mini.server.backend import Backend, BackendEvent
from sky_mini.server.hooks import HookRunner
from sky_mini.spec import effective_cpus
from sky_mini.state import Store, acquire_flock, atomic_write_json, read_json
from sky_mini.units import format_size

log = logging.getLogger("sky_mini.server")

TICK_SECONDS = 1.0
STATUS_HEARTBEAT_SECONDS = 5.0
STATUS_MIN_INTERVAL_SECONDS = 0.05
"""While jobs come and go, status.json and jobs/active.json are rewritten at most this often
(each write is a rename, which ext4 turns into a flush: ~2 ms per write in a drain)."""
NOTE_WAITING_AFTER_SECONDS = 1.0
"""A PENDING job's waiting reason is written to its record once it has waited this long."""
SHUTDOWN_EXTRA_SECONDS = 5.0
JOB_RESERVATION_EPSILON = 1e-9
PRUNE_INTERVAL_SECONDS = 3600.0
HISTORY_SCAN_BATCH = 500
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class AlreadyRunning(Exception):
    """Another server holds this home's server lock."""


def home_key(home: str) -> str:
    """A short stable key for a home: names its cgroups and job markers."""
    return hashlib.sha256(home.encode()).hexdigest()[:10]


@dataclass
class Capacity:
    cpus: float
    memory_bytes: int
    used_cpus: float = 0.0
    used_memory: int = 0
    holders: dict[int, tuple[float, int]] = field(default_factory=dict)

    def fits_ever(self, cpus: float, memory: int) -> bool:
        return cpus <= self.cpus + JOB_RESERVATION_EPSILON and memory <= self.memory_bytes

    def fits_now(self, cpus: float, memory: int) -> bool:
        return (
            self.used_cpus + cpus <= self.cpus + JOB_RESERVATION_EPSILON
            and self.used_memory + memory <= self.memory_bytes
        )

    def reserve(self, job_id: int, cpus: float, memory: int) -> None:
        self.holders[job_id] = (cpus, memory)
        self.used_cpus += cpus
        self.used_memory += memory

    def release(self, job_id: int) -> None:
        cpus, memory = self.holders.pop(job_id, (0.0, 0))
        self.used_cpus = max(0.0, self.used_cpus - cpus)
        self.used_memory = max(0, self.used_memory - memory)

    def waiting_reason(self, cpus: float, memory: int) -> str:
        if self.used_cpus + cpus > self.cpus + JOB_RESERVATION_EPSILON:
            users = ", ".join(f"job {j}" for j, (c, _) in sorted(self.holders.items()) if c)
            return f"waiting for {cpus:g} CPU: {self.used_cpus:g}/{self.cpus:g} in use" + (
                f" by {users}" if users else ""
            )
        users = ", ".join(f"job {j}" for j, (_, m) in sorted(self.holders.items()) if m)
        return (
            f"waiting for {format_size(memory)} of memory: {format_size(self.used_memory)}/"
            f"{format_size(self.memory_bytes)} reserved" + (f" by {users}" if users else "")
        )


def job_needs(record: JobRecord, machine_cpus: float) -> tuple[float, int]:
    """What a job reserves; a default CPU request is min(1, ``machine_cpus``)."""
    resources = record.task.get("resources") or {}
    cpus = effective_cpus(
        float(resources.get("cpus") or 1.0),
        bool(resources.get("cpus_defaulted", False)),
        machine_cpus,
    )
    memory = int(resources.get("memory_bytes") or 0)
    return cpus, memory


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
        self.scan_cursor = 1  # next finished record to check once after start (see scan_history)
        self.scan_end = 0
        self.warnings: list[str] = []
        self.unsaved: dict[int, JobRecord] = {}  # records a full disk stopped us saving
        self.lock_fd = -1
        self.wake_fds: tuple[int, int] = (-1, -1)
        self.signal_fds: tuple[int, int] = (-1, -1)
        self.selector = selectors.DefaultSelector()
        self.backend: Backend | None = None
        self.capacity = Capacity(cpus=1.0, memory_bytes=1)
        self.details: dict[str, Any] = {}
        self.services: Any = None  # sky_mini.server.services.ServicesSupervisor
        self.http: Any = None  # sky_mini.server.http_component.HttpSupervisor (--http)
        self.hooks = HookRunner(
            on_failure=settings.hook_on_failure,
            on_finish=settings.hook_on_finish,
            timeout=settings.hook_timeout_seconds,
            log_path=paths.hooks_log,
            marker_prefix=f"{self.key}:{self.instance_id}",
            detach="hook_detach" not in settings.disabled,
        )

    # -- start -----------------------------------------------------------------------

    def acquire_server_lock(self) -> None:
        fd = os.open(self.paths.server_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            acquire_flock(fd, self.paths.server_lock, 0)
        except OSError:
            os.close(fd)
            raise AlreadyRunning() from None
        os.set_inheritable(fd, False)
        self.lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

    def open_wake_fifo(self) -> None:
        path = self.paths.wake_fifo
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            import stat

            if not stat.S_ISFIFO(st.st_mode):
                os.unlink(path)
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        # Hold a writer ourselves so the reader never sees EOF between clients.
        keep_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        self.wake_fds = (read_fd, keep_fd)
        self.selector.register(read_fd, selectors.EVENT_READ, "wake")

    def install_signal_handlers(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self.signal_fds = (read_fd, write_fd)
        self.selector.register(read_fd, selectors.EVENT_READ, "signal")
        signal.set_wakeup_fd(write_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals_seen.append(signum)

    def prepare(self) -> None:
        """Everything before the first tick; raises AlreadyRunning if another server runs."""
        ensure_dirs(self.paths)
        self.acquire_server_lock()
        self.configure_host()
        self.open_wake_fifo()
        self.install_signal_handlers()
        self.reconcile_previous_instance()
        self.start_backend()
        self.load_new_jobs()
        self.start_services()
        self.start_http()
        self.write_status(force=True)
        log.info(
            "sky-mini %s serving (pid %d, home %s, %d job executor(s))",
            __version__,
            os.getpid(),
            self.paths.home,
            len(self.backend_components()),
        )

    def configure_host(self) -> None:
        from sky_mini.capacity import publish as publish_capacity
        from sky_mini.cgroups import detect_capabilities
        from sky_mini.resources import detect_resources, size_pool

        settings = self.settings
        detected = detect_resources(
            config_cpus=settings.cpus, config_memory_bytes=settings.memory_bytes
        )
        pool = size_pool(detected.cpus, detected.memory_bytes, self.executors_override)
        if pool.warning:
            log.warning("%s", pool.warning)
            self.warnings.append(pool.warning)
        self.capacity = Capacity(cpus=detected.cpus, memory_bytes=pool.usable_memory_bytes)
        publish_capacity(
            self.paths.server_dir, self.paths.config, detected.cpus, detected.memory_bytes
        )
        caps = detect_capabilities(disabled="cgroup" in settings.disabled)
        for warning in caps.warnings:
            log.warning("%s", warning)
            self.warnings.append(warning)
        mechanism = settings.memory_mechanism
        if mechanism == "auto":
            mechanism = "cgroup" if caps.can_limit_memory else "watchdog"
        elif mechanism == "cgroup" and not caps.can_limit_memory:
            note = "limits.memory is 'cgroup' but no cgroup memory controller is writable; "
            note += "using the RSS watchdog"
            log.warning("%s", note)
            self.warnings.append(note)
            mechanism = "watchdog"
        self.memory_mechanism = mechanism
        self.cgroup_caps = None if "cgroup" in settings.disabled else caps
        subreaper = False
        if self.pid1:
            subreaper = True  # PID 1 already adopts every orphan in its namespace
        elif "subreaper" not in settings.disabled:
            subreaper = procs.set_child_subreaper()
            if not subreaper:
                note = "PR_SET_CHILD_SUBREAPER is unavailable: escaped job processes reparent "
                note += "to init; relying on cgroups and the marker sweep"
                log.warning("%s", note)
                self.warnings.append(note)
        if "oom_score" not in settings.disabled:
            procs.set_oom_score_adj(-500) or procs.set_oom_score_adj(0)
        self.details = {
            "resources": detected.to_json(),
            "pool": pool.to_json(),
            "cgroups": caps.describe(),
            "memory_mechanism": mechanism,
            "subreaper": subreaper,
            "pid1": self.pid1,
            "backend": "local",
        }
        self.pool = pool

    def start_backend(self) -> None:
        from sky_mini.server.local import LocalBackend

        backend = LocalBackend(
            self.pool.job_executors,
            cgroup_caps=self.cgroup_caps,
            cgroup_base=f"sky-mini-{self.key}",
            memory_mechanism=self.memory_mechanism,
            disabled=self.settings.disabled,
        )
        backend.on_close = self.forget_fd
        backend.start()
        self.backend = backend
        self.register_backend_fds()

    def forget_fd(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)

    def register_backend_fds(self) -> None:
        assert self.backend is not None
        registered = {key.fd for key in self.selector.get_map().values()}
        for fd in self.backend.filenos():
            if fd not in registered:
                self.selector.register(fd, selectors.EVENT_READ, "backend")

    def start_services(self) -> None:
        """The services supervisor; it forks the services-controller when a service is up."""
        from sky_mini.server.services import ServicesSupervisor

        self.services = ServicesSupervisor(
            self.paths,
            self.settings,
            selector=self.selector,  # it registers and unregisters its own event pipe
            key=self.key,
            instance_id=self.instance_id,
            cgroup_caps=self.cgroup_caps,
            cgroup_base=f"sky-mini-{self.key}",
            memory_mechanism=self.memory_mechanism,
            clock=self.clock,
        )

    def start_http(self) -> None:
        """The ``sky-mini: http`` component, when ``--http`` / ``http.listen`` asks for it."""
        if not self.settings.http_listen:
            return
        from sky_mini.server.http_component import HttpSupervisor

        self.http = HttpSupervisor(
            self.paths.home,
            self.settings.http_listen,
            self.settings.disabled,
            selector=self.selector,
        )
        self.http.maintain(self.clock())

    def maintain_http(self, now: float) -> None:
        if self.http is not None and self.http.maintain(now):
            self.status_dirty = True

    def backend_components(self) -> list[dict[str, Any]]:
        return self.backend.components() if self.backend is not None else []

    # -- restart reconciliation -------------------------------------------------------

    def reconcile_previous_instance(self) -> None:
        """Kill what a dead predecessor left and record its interrupted jobs as lost."""
        previous = read_json(self.paths.server_status)
        last_seen = None
        if isinstance(previous, dict):
            last_seen = previous.get("updated_at")
        if "sweep" not in self.settings.disabled:
            killed = procs.sweep_marked([f"{self.key}:"])
            if killed:
                log.warning("killed %d leftover process(es) of a previous server", len(killed))
        leftovers: list[str] = []
        candidates, next_id = self.unfinished_job_ids()
        for job_id in candidates:
            record = self.store.load_job(job_id)
            if record is None or record.status.is_terminal:
                continue
            if record.status is JobStatus.PENDING:
                self.adopt_job(job_id)
            elif record.status.is_active:
                leftovers.extend(record.cgroup_paths)
                from sky_mini.server.local import kill_job_leftovers

                if procs.is_same_process(record.pid, record.pid_create_time):
                    kill_job_leftovers(record.pgid, record.cgroup_paths)
                when = (
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last_seen))
                    if isinstance(last_seen, int | float)
                    else "an unknown time"
                )
                record.finish(
                    JobStatus.KILLED,
                    now=self.clock(),
                    reason=(
                        f"the server stopped while this job ran (last seen alive {when}); "
                        "submit it again"
                    ),
                    reason_code=ReasonCode.SUPERVISOR_LOST.value,
                    exit_code=None,
                )
                log.warning("job %d was running when the previous server died", job_id)
                if self.end_attempt(record, self.clock()):
                    self.adopt_job(job_id)
        # Every record below the counter *as read above* has been looked at, so the first
        # load_new_jobs need not read the whole history again. Not the counter now: CLIs
        # racing this start may have recorded jobs since, and load_new_jobs must adopt them.
        self.seen_through = max([self.seen_through, next_id - 1, *candidates])
        self.scan_end = self.seen_through
        self.active_dirty = True
        if self.cgroup_caps is not None:
            from sky_mini.cgroups import sweep_base

            with contextlib.suppress(OSError):
                sweep_base(self.cgroup_caps, f"sky-mini-{self.key}", leftovers)

    def unfinished_job_ids(self) -> tuple[list[int], int]:
        """IDs that may be unfinished, and the next ID as read when they were listed.

        The IDs are the active index's plus every ID after its ``seen_through``.
        """
        active, seen_through = self.store.read_active()
        if not os.path.exists(self.paths.active_index):
            seen_through = 0  # no index: look at every record once
        next_id = self.store.next_id()
        return sorted(set(active) | set(range(seen_through + 1, next_id))), next_id

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
            self.spawn_successor()
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

    def spawn_successor(self) -> None:
        """Start a fresh detached server (our lock is already released) for late work."""
        import subprocess

        argv = [sys.executable, "-m", "sky_mini", "serve", "--foreground", "--detached"]
        idle = "off" if self.idle_minutes is None else f"{self.idle_minutes:g}"
        argv += ["--idle-minutes", idle]
        log.info("work arrived during the idle stop: starting a successor server")
        with contextlib.suppress(OSError):
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)

    def tick(self) -> bool:
        """One pass of the loop. Returns True when the server should exit."""
        self.wait_for_events(self.next_timeout())
        now = self.clock()
        self.handle_signals()
        self.reap_children()
        self.hooks.enforce_timeouts(now)
        self.handle_backend_events(now)
        self.load_new_jobs()
        self.handle_intents(now)
        self.maintain_components()
        self.reconcile_services(now)
        self.maintain_http(now)
        self.dispatch_pending(now)
        self.check_autostop(now)
        self.prune_history(now)
        self.scan_history()
        self.retry_unsaved_jobs()
        self.write_active_index()
        self.write_status()
        return self.shutdown_complete(now)

    def next_timeout(self) -> float:
        if self.stop_requested is not None:
            return 0.1
        if self.status_dirty or self.active_dirty:  # a held-back write is due soon
            last = min(self.last_status_write, self.last_active_write)
            due = last + STATUS_MIN_INTERVAL_SECONDS - self.clock()
            return min(TICK_SECONDS, max(0.0, due))
        return TICK_SECONDS

    def wait_for_events(self, timeout: float) -> None:
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
        (``waitpid(-1)``) is what keeps a container free of zombies.
        """
        if "reap" in self.settings.disabled:  # test-only negative control
            reaped = procs.reap_pids(self.own_child_pids())
        else:
            reaped = procs.reap_any()
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

    def own_child_pids(self) -> list[int]:
        pids = [c["pid"] for c in self.backend_components() if c.get("pid")]
        pids += self.hooks.pids()
        if self.services is not None:
            pids += [c["pid"] for c in self.services.components() if c.get("pid")]
        if self.http is not None:
            pids += [c["pid"] for c in self.http.components() if c.get("pid")]
        return pids

    def handle_backend_events(self, now: float) -> None:
        if self.backend is None:
            return
        events = self.backend.poll()
        # A job that started and finished within one poll gets one (durable) write, not two.
        finished = {e.job_id for e in events if e.kind == "finished"}
        for event in events:
            self.apply_event(event, now, save=event.job_id not in finished)

    def apply_event(self, event: BackendEvent, now: float, *, save: bool = True) -> None:
        record = self.jobs.get(event.job_id)
        if record is None:
            return
        data = event.data
        if event.kind == "started":
            record.status = JobStatus.RUNNING if data.get("phase") == "run" else JobStatus.STARTING
            record.started_at = record.started_at or now
            record.pid = data.get("pid")
            record.pgid = data.get("pgid")
            record.pid_create_time = data.get("create_time")
            record.cgroup_paths = list(data.get("cgroup_paths") or [])
            record.memory_mechanism = data.get("memory_mechanism")
            record.executor = data.get("executor")
            record.reason = None
            if save:
                self.save_job(record, durable=False)
        elif event.kind == "finished":
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
            record.started_at = record.started_at or now
            log.info(
                "job %d %s%s",
                record.id,
                status.value,
                f": {record.reason}" if record.reason else "",
            )
            self.capacity.release(record.id)
            if not self.end_attempt(record, now):
                del self.jobs[record.id]
            self.active_dirty = True
        self.status_dirty = True

    def end_attempt(self, record: JobRecord, now: float) -> bool:
        """Record the attempt that just ended; True when it is queued again (``--retries``),
        else the job is over and its hooks run. Saves the record either way."""
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
        self.save_job(record)
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
        for kind, job_id in self.store.take_intents():
            if kind != "cancel":
                log.warning("ignoring unknown intent %s-%d", kind, job_id)
                continue
            record = self.jobs.get(job_id)
            if record is None:
                continue
            if record.status is JobStatus.PENDING:
                record.finish(
                    JobStatus.CANCELLED,
                    now=now,
                    reason="cancelled by user before it started",
                    reason_code=ReasonCode.CANCELLED.value,
                    exit_code=None,
                )
                self.save_job(record)
                del self.jobs[job_id]
                self.active_dirty = True
                self.status_dirty = True
                log.info("job %d CANCELLED before it started", job_id)
                self.hooks.job_ended(record, now)
            elif self.backend is not None:
                log.info(
                    "cancelling job %d (SIGTERM, SIGKILL after %gs)",
                    job_id,
                    self.settings.kill_grace_seconds,
                )
                self.backend.stop(job_id, "cancel", self.settings.kill_grace_seconds)

    def maintain_components(self) -> None:
        if self.backend is None or self.stop_requested is not None:
            return
        for note in self.backend.maintain():
            log.warning("%s", note)
            self.status_dirty = True
        self.register_backend_fds()

    def reconcile_services(self, now: float) -> None:
        if self.services is not None and self.services.reconcile(now):
            self.status_dirty = True

    def dispatch_pending(self, now: float) -> None:
        """Start every PENDING job whose reservation fits, oldest first."""
        if self.backend is None or self.stop_requested is not None:
            return
        gate = batch.build_gate(self.settings.queues, self.paths.paused, self.jobs.values())
        for job_id in sorted(self.jobs):
            record = self.jobs[job_id]
            if record.status is not JobStatus.PENDING:
                continue
            held = batch.hold_reason(record, now, gate)
            if held is not None:
                self.note_waiting(record, held, now)
                continue
            cpus, memory = job_needs(record, self.capacity.cpus)
            if not self.capacity.fits_ever(cpus, memory):
                self.fail_never_fits(record, cpus, memory, now)
                continue
            if self.backend.free_slots() <= 0:
                self.note_waiting(record, "waiting for a free executor: all are busy", now)
                continue
            if not self.capacity.fits_now(cpus, memory):
                self.note_waiting(record, self.capacity.waiting_reason(cpus, memory), now)
                continue
            self.capacity.reserve(job_id, cpus, memory)
            self.unsaved_waits.discard(job_id)
            record.status = JobStatus.STARTING
            record.reason = None
            record.retry_at = None
            gate.note_started(record)
            record.executor = self.backend.launch(record, self.job_payload(record))
            record.started_at = now
            self.save_job(record, durable=False)
            self.status_dirty = True

    def job_payload(self, record: JobRecord) -> dict[str, Any]:
        env = dict(record.env or os.environ)
        env.update(record.task.get("envs") or {})
        env["SKY_MINI_JOB_ID"] = str(record.id)
        return {
            "id": record.id,
            "task": record.task,
            "log_path": record.log_path,
            "marker": procs.marker_for(f"{self.key}:{self.instance_id}", f"job-{record.id}"),
            "env": env,
        }

    def note_waiting(self, record: JobRecord, reason: str, now: float) -> None:
        """Record why a PENDING job waits; written once it has waited a moment (a queue that
        drains at once would otherwise pay one record write per job for a reason nobody saw)."""
        if record.reason == reason and record.id not in self.unsaved_waits:
            return
        record.reason = reason
        if now - record.submitted_at < NOTE_WAITING_AFTER_SECONDS:
            self.unsaved_waits.add(record.id)
            return
        self.unsaved_waits.discard(record.id)
        self.save_job(record, durable=False)

    def fail_never_fits(self, record: JobRecord, cpus: float, memory: int, now: float) -> None:
        reason = (
            f"needs {cpus:g} CPU and {format_size(memory)} but this machine can give at most "
            f"{self.capacity.cpus:g} CPU and {format_size(self.capacity.memory_bytes)}; "
            "lower resources.cpus/resources.memory"
        )
        record.finish(
            JobStatus.FAILED,
            now=now,
            reason=reason,
            reason_code=ReasonCode.NEVER_FITS.value,
            exit_code=None,
        )
        self.save_job(record)
        del self.jobs[record.id]
        self.active_dirty = True
        log.warning("job %d can never run here: %s", record.id, reason)
        self.hooks.job_ended(record, now)

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

    def scan_history(self) -> None:
        """Read every older record once after start, a batch per tick, so a damaged one is
        quarantined (and a newer-schema one reported) without slowing the start itself."""
        stop = min(self.scan_end + 1, self.scan_cursor + HISTORY_SCAN_BATCH)
        for job_id in range(self.scan_cursor, stop):
            if job_id not in self.jobs:
                self.store.load_job(job_id)
        self.scan_cursor = stop

    def prune_history(self, now: float) -> None:
        if now - self.last_prune < PRUNE_INTERVAL_SECONDS:
            return
        self.last_prune = now
        from sky_mini.server.retention import prune_finished_jobs

        removed = prune_finished_jobs(self.store, now - self.settings.retention_days * 86400)
        if removed:
            log.info(
                "pruned %d finished job(s) older than %g days",
                removed,
                self.settings.retention_days,
            )

    # -- shutdown ------------------------------------------------------------------------

    def initiate_shutdown(self, why: str) -> None:
        if self.stop_requested is not None:
            return
        self.stop_requested = why
        self.stopping_since = self.clock()
        grace = self.settings.kill_grace_seconds
        running = [j for j, r in self.jobs.items() if r.status.is_active]
        if running:
            log.info(
                "stopping %d running job(s): SIGTERM now, SIGKILL after %gs", len(running), grace
            )
        if self.services is not None:
            self.services.shutdown(grace)
        if self.http is not None:
            self.http.shutdown()
        if self.backend is not None:
            self.backend.shutdown(grace)
        self.status_dirty = True

    def shutdown_complete(self, now: float) -> bool:
        if self.stop_requested is None or self.backend is None:
            return False
        from sky_mini.server.local import LocalBackend

        backend = self.backend
        if isinstance(backend, LocalBackend):
            backend.close_idle_pipes()
        assert self.stopping_since is not None
        deadline = self.stopping_since + self.settings.kill_grace_seconds + SHUTDOWN_EXTRA_SECONDS
        if now > deadline and isinstance(backend, LocalBackend) and not backend.is_stopped():
            log.warning("executors did not stop in time: killing them")
            backend.force_kill()
        if now > deadline and self.http is not None:
            self.http.force_kill()
        services_done = self.services is None or self.services.is_stopped()
        http_done = self.http is None or self.http.is_stopped()
        # A hook already sending its mail may finish, within the same bound as the jobs.
        hooks_done = not self.hooks.running or now > deadline
        return backend.is_stopped() and services_done and http_done and hooks_done

    def cleanup(self) -> None:
        """Record what is left and release everything (the lock last)."""
        now = self.clock()
        for record in list(self.jobs.values()):
            if record.status.is_active:
                record.finish(
                    JobStatus.KILLED,
                    now=now,
                    reason="the server shut down while the job ran; submit it again",
                    reason_code=ReasonCode.SHUTDOWN.value,
                    exit_code=None,
                )
                self.save_job(record)
                del self.jobs[record.id]
                self.active_dirty = True
        with contextlib.suppress(OSError):
            self.write_active_index(force=True)
        self.hooks.kill_all()
        if self.cgroup_caps is not None:
            from sky_mini.cgroups import remove_base

            with contextlib.suppress(OSError):
                remove_base(self.cgroup_caps, f"sky-mini-{self.key}")
        with contextlib.suppress(OSError):
            self.write_status(force=True, state="stopped")
        for fd in (*self.wake_fds, *self.signal_fds):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    # -- published state -----------------------------------------------------------------

    def save_job(self, record: JobRecord, *, durable: bool = True) -> None:
        """Write a record; on a full disk keep it in memory and retry every tick.

        The server must outlive a full disk: its in-memory record is the truth until the
        write succeeds (clients see the last record written until then).
        """
        try:
            self.store.save_job(record, durable=durable)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            if record.id not in self.unsaved:
                log.warning(
                    "cannot save job %d's record (%s); will retry when there is space",
                    record.id,
                    exc.strerror,
                )
            self.unsaved[record.id] = record
            return
        self.unsaved.pop(record.id, None)

    def retry_unsaved_jobs(self) -> None:
        for record in list(self.unsaved.values()):
            self.save_job(record)

    def write_active_index(self, *, force: bool = False) -> None:
        if not self.active_dirty:
            return
        now = self.clock()
        if not force and now - self.last_active_write < STATUS_MIN_INTERVAL_SECONDS:
            return  # still dirty; a stale index only lists finished jobs as unfinished
        try:
            self.store.write_active(sorted(self.jobs), self.seen_through)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            return  # still dirty: retried next tick
        self.active_dirty = False
        self.last_active_write = now

    def write_status(self, *, force: bool = False, state: str | None = None) -> None:
        now = self.clock()
        if not (
            force or self.status_dirty or now - self.last_status_write >= STATUS_HEARTBEAT_SECONDS
        ):
            return
        if not force and now - self.last_status_write < STATUS_MIN_INTERVAL_SECONDS:
            return  # still dirty: written by a tick at most STATUS_MIN_INTERVAL_SECONDS later
        if state is None:
            state = "stopping" if self.stop_requested is not None else "running"
        pending = sum(1 for r in self.jobs.values() if r.status is JobStatus.PENDING)
        autostop_at = None
        if self.idle_minutes is not None and self.idle_since is not None:
            autostop_at = self.idle_since + self.idle_minutes * 60
        components = self.backend_components()
        if self.services is not None:
            components.extend(self.services.components())
        if self.http is not None:
            components.extend(self.http.components())
        status = {
            "schema": 1,
            "state": state,
            "pid": os.getpid(),
            "create_time": procs.process_create_time(os.getpid()),
            "instance_id": self.instance_id,
            "version": __version__,
            "home": self.paths.home,
            "started_at": self.started_at,
            "updated_at": now,
            "detached": self.detached,
            "idle_minutes": self.idle_minutes,
            "autostop_at": autostop_at,
            "stop_reason": self.stop_requested,
            "warnings": self.warnings,
            "capacity": {
                "cpus": self.capacity.cpus,
                "memory_bytes": self.capacity.memory_bytes,
                "used_cpus": self.capacity.used_cpus,
                "used_memory_bytes": self.capacity.used_memory,
            },
            "queue": {"pending": pending, "running": len(self.jobs) - pending},
            "components": components,
            "services": self.services.status_json() if self.services is not None else None,
            **self.details,
        }
        try:
            atomic_write_json(self.paths.server_status, status, durable=False)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            log.warning("cannot write %s: no space left on device", self.paths.server_status)
        self.status_dirty = False
        self.last_status_write = now


def configure_logging(paths: Paths, *, detached: bool) -> None:
    """Log to stderr; a foreground server also appends to server.log for ``api logs``."""
    root = logging.getLogger("sky_mini")
    root.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if not detached:
        with contextlib.suppress(OSError):
            # Our own open: 0600 and never through a symlink planted in the home.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            log_file = os.fdopen(os.open(paths.server_log, flags, 0o600), "a", buffering=1)
            handler = logging.StreamHandler(log_file)
            handler.setFormatter(formatter)
            root.addHandler(handler)
    root.propagate = False


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
