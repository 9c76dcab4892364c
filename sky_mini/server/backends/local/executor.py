"""The job executor: a named process forked by the server that runs one job at a time.

Lifecycle of an executor (``sky-mini: executor job-N``):
1. forked from the server's main thread; sets ``PR_SET_PDEATHSIG(SIGTERM)`` and re-checks
   ``getppid()``, becomes a child subreaper (so a job's orphans reparent here), closes every
   descriptor it did not need;
2. waits for ``run`` commands on its command pipe. A job runs as its own session and process
   group, in a per-job cgroup when the host has one, with stdout+stderr in its log file;
3. reports ``started`` and ``finished`` events on its event pipe;
4. when the command pipe reaches EOF or SIGTERM arrives (the server is gone), SIGKILLs the
   job's cgroup, process group and every remaining descendant, and exits.

Memory limits are enforced by the job's cgroup, or else by a watchdog that samples the RSS
of the job's whole tree every few milliseconds, backed by ``RLIMIT_DATA`` (see memguard).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from sky_mini import memguard, procs
from sky_mini.models import JobStatus, ReasonCode, exit_code_for
from sky_mini.server.backends.local.jobproc import ReadyChild, fork_job
from sky_mini.server.channel import LineReader, send_message
from sky_mini.server.tied import LoopSignals, parent_gone, parent_sentinel
from sky_mini.units import format_size

PEAK_SAMPLE_INTERVAL_SECONDS = 0.5
IDLE_WAKE_SECONDS = 5.0
SHELL = shutil.which("bash") or "/bin/sh"


@dataclass
class ExecutorConfig:
    """What an executor needs from the server; inherited across fork, never serialized."""

    name: str
    server_pid: int
    cgroup_caps: Any  # sky_mini.cgroups.CgroupCapabilities
    cgroup_base: str
    memory_mechanism: str  # "cgroup" | "watchdog"
    disabled: frozenset[str] = frozenset()
    launcher: str | None = None  # the native job launcher (``launcher``), if this host has it


@dataclass
class RunningJob:
    job_id: int
    task: dict[str, Any]
    log_path: str
    marker: str
    env: dict[str, str]
    limit_bytes: int | None
    timeout_at: float | None
    phase: str = "setup"
    pid: int = 0
    cgroup: Any = None  # sky_mini.cgroups.JobCgroup | None
    status: int | None = None  # raw wait status of the current phase's process
    stop_reason: str | None = None  # cancel | group | shutdown | timeout | memory_limit | lost
    kill_at: float | None = None
    peak_bytes: int = 0
    next_sample: float = 0.0
    vmstat_oom_start: int | None = None
    last_rss: int = 0  # the tree's RSS at the last sample (sets the watchdog's pace)
    log_start: int = 0  # where this run's output begins in the (appended) log
    extra: dict[str, Any] = field(default_factory=dict)


class Executor:
    def __init__(self, config: ExecutorConfig, cmd_fd: int, evt_fd: int) -> None:
        self.config = config
        self.commands = LineReader(cmd_fd)
        self.evt_fd = evt_fd
        self.job: RunningJob | None = None
        self.exiting = False
        self.signals = LoopSignals()
        self.ready: ReadyChild | None = None  # the next job's process, forked ahead (jobproc)
        self.slot: Any = None  # this executor's reusable job group (cgroups.slot), if any
        self.launcher = config.launcher
        self.launcher_failure: str | None = None  # told in the next job's log, then cleared

    # -- setup -----------------------------------------------------------------------

    # -- main loop -------------------------------------------------------------------

    def run(self) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.commands.fd, selectors.EVENT_READ)
        selector.register(self.signals.read_fd, selectors.EVENT_READ)
        sentinel = parent_sentinel()
        if sentinel is not None:
            selector.register(sentinel, selectors.EVENT_READ)
        self.prepare_next_job()
        while True:
            selector.select(self.next_timeout())
            self.signals.drain()
            if self.signals.term_received:
                self.handle_server_gone("SIGTERM (server gone)")
                return 0
            for message in self.commands.read_messages():
                self.handle_command(message)
            if self.commands.eof or parent_gone():
                if "pipe" not in self.config.disabled:
                    why = "command pipe closed" if self.commands.eof else "parent sentinel EOF"
                    self.handle_server_gone(f"{why} (server gone)")
                    return 0
                # Test-only negative control: ignore the server's death on both pipes.
                for fd in (self.commands.fd, -1 if sentinel is None else sentinel):
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(fd)
            self.reap_children()
            self.enforce_limits(time.monotonic())
            if self.advance_job():
                self.prepare_next_job()
            if self.exiting and self.job is None:
                if self.ready is not None:
                    self.ready.close()  # it reads EOF and exits
                self.discard_slot()  # so the server can remove the base group
                return 0

    def next_timeout(self) -> float:
        job = self.job
        if job is None:
            return IDLE_WAKE_SECONDS
        now = time.monotonic()
        candidates = [PEAK_SAMPLE_INTERVAL_SECONDS]
        if self.memory_mechanism_for(job) == "watchdog":
            candidates.append(
                memguard.watchdog_interval(self.config.disabled, job.last_rss, job.limit_bytes)
            )
        for moment in (job.timeout_at, job.kill_at):
            if moment is not None:
                candidates.append(max(0.0, moment - now))
        return max(0.0, min(candidates))

    # -- commands from the server ----------------------------------------------------

    def handle_command(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "run" and self.job is None:
            self.start_job(message["job"])
        elif op == "stop" and self.job is not None and message.get("job_id") == self.job.job_id:
            self.stop_job(str(message.get("reason", "cancel")), float(message.get("grace", 10)))
        elif op == "exit":
            self.exiting = True
            if self.job is not None:
                self.stop_job("shutdown", float(message.get("grace", 10)))

    def start_job(self, spec: dict[str, Any]) -> None:
        task = spec["task"]
        resources = task.get("resources") or {}
        timeout = resources.get("timeout_seconds")
        env = dict(spec["env"])
        env[procs.MARKER_ENV] = spec["marker"]
        self.job = RunningJob(
            job_id=int(spec["id"]),
            task=task,
            log_path=spec["log_path"],
            marker=spec["marker"],
            env=env,
            limit_bytes=resources.get("memory_bytes"),
            timeout_at=time.monotonic() + float(timeout) if timeout else None,
            vmstat_oom_start=procs.read_vmstat_oom_kills(),
            log_start=memguard.log_size(spec["log_path"]),
        )
        self.job.cgroup = self.create_cgroup(self.job)
        self.job.phase = "setup" if task.get("setup") else "run"
        self.spawn_phase(self.job)

    def create_cgroup(self, job: RunningJob) -> Any:
        caps = self.config.cgroup_caps
        if caps is None or "cgroup" in self.config.disabled:
            return None
        from sky_mini.cgroups import JobCgroup

        limit = job.limit_bytes if self.config.memory_mechanism == "cgroup" else None
        if self.slot is not None:
            from sky_mini.cgroups.slot import claim_slot

            if claim_slot(self.slot, limit):
                return self.slot
            self.discard_slot()
        try:
            return JobCgroup.create(caps, self.config.cgroup_base, f"job-{job.job_id}", limit)
        except OSError as exc:
            self.log(job, f"sky-mini: warning: could not create a cgroup for this job: {exc}")
            return None

    def prepare_next_job(self) -> None:
        """While idle: fork the next job's process ahead of its job (``jobproc``), already
        in this executor's slot group when it has one (``cgroups.slot``)."""
        if self.ready is not None or self.exiting or "prefork" in self.config.disabled:
            return
        self.open_slot()
        joined = tuple(self.slot.procs_files()) if self.slot is not None else ()
        role = f"executor {self.config.name}: ready"
        self.ready = self.spawn_launcher(role, joined)
        if self.ready is None:
            self.ready = ReadyChild.fork(self.config.disabled, role, joined)

    def spawn_launcher(self, role: str, joined: tuple[str, ...] = ()) -> ReadyChild | None:
        """The native launcher as a ready child; None without one. A launcher that cannot
        be started is dropped for this executor's life (jobs fork) and the next job's log
        says why."""
        if self.launcher is None:
            return None
        try:
            return ReadyChild.spawn(self.launcher, self.config.disabled, role, joined)
        except OSError as exc:
            self.launcher_failure = (
                f"the native job launcher {self.launcher} cannot be started ({exc}); "
                "jobs start through a Python fork"
            )
            self.launcher = None
            return None

    def open_slot(self) -> None:
        caps = self.config.cgroup_caps
        disabled = self.config.disabled
        if self.slot is not None or caps is None or {"cgroup", "slots"} & disabled:
            return
        from sky_mini.cgroups.slot import open_slot

        with contextlib.suppress(OSError):
            self.slot = open_slot(caps, self.config.cgroup_base, f"slot-{self.config.name}")

    def discard_slot(self) -> None:
        """Remove the slot group (and whatever is in it); jobs get their own groups until
        the next ``open_slot``."""
        if self.slot is not None:
            self.slot.remove()
            self.slot = None

    def release_cgroup(self, job: RunningJob) -> None:
        if job.cgroup is None:
            return
        if job.cgroup is not self.slot:
            job.cgroup.remove()
            return
        from sky_mini.cgroups.slot import release_slot

        if not release_slot(self.slot):
            self.discard_slot()

    def spawn_phase(self, job: RunningJob) -> None:
        spec = self.job_spec(job)
        ready, self.ready = self.ready, None
        if ready is None and not spec.get("file_mounts"):
            ready = self.spawn_launcher(f"executor {self.config.name}: job {job.job_id}")
        if self.launcher_failure is not None:  # this spawn's, or the last ready child's
            self.log(job, f"sky-mini: warning: {self.launcher_failure}")
            self.launcher_failure = None
        handed = spec
        if ready is not None and ready.joined == tuple(spec["procs_files"]):
            handed = {**spec, "procs_files": []}  # it is in the job's groups already
        if ready is not None and ready.start(handed):
            pid = ready.pid
        else:  # a fresh fork joins the groups itself: the whole spec
            pid = fork_job(spec, self.config.disabled)
        job.pid = pid
        job.status = None
        # Under a cgroup the kernel enforces the limit and keeps the peak: the first /proc
        # walk can wait (it would only compete with the job's exec for the CPU).
        if self.memory_mechanism_for(job) != "watchdog":
            job.next_sample = time.monotonic() + PEAK_SAMPLE_INTERVAL_SECONDS
        send_message(
            self.evt_fd,
            {
                "event": "started",
                "job_id": job.job_id,
                "phase": job.phase,
                "pid": pid,
                "pgid": pid,
                "create_time": procs.process_create_time(pid),
                "cgroup_paths": list(job.cgroup.paths) if job.cgroup is not None else [],
                "memory_mechanism": self.memory_mechanism_for(job),
            },
        )

    def memory_mechanism_for(self, job: RunningJob) -> str | None:
        """How this job's memory limit is enforced: the kernel (cgroup) or our watchdog."""
        if job.limit_bytes is None:
            return None
        cgroup = job.cgroup
        if (
            self.config.memory_mechanism == "cgroup"
            and cgroup is not None
            and cgroup.memory_limited
        ):
            return "cgroup"
        return "watchdog"

    def job_spec(self, job: RunningJob) -> dict[str, Any]:
        """What the job process needs to become this phase of the job (``become_job``)."""
        first_phase = "setup" if job.task.get("setup") else "run"
        return {
            "command": str(job.task.get("setup") if job.phase == "setup" else job.task["run"]),
            "shell": SHELL,
            "workdir": job.task.get("workdir") or os.getcwd(),
            "log_path": job.log_path,
            "env": job.env,
            "procs_files": list(job.cgroup.procs_files()) if job.cgroup is not None else [],
            "data_limit": job.limit_bytes if self.uses_data_limit(job) else None,
            "file_mounts": job.task.get("file_mounts") if job.phase == first_phase else None,
        }

    def stop_job(self, reason: str, grace: float) -> None:
        """TERM the job's group now, KILL everything left after ``grace`` seconds."""
        job = self.job
        if job is None or job.stop_reason is not None:
            return
        job.stop_reason = reason
        self.signal_job(job, signal.SIGTERM)
        job.kill_at = time.monotonic() + max(0.0, grace)

    # -- watching the job -------------------------------------------------------------

    def uses_data_limit(self, job: RunningJob) -> bool:
        """The RLIMIT_DATA backstop under the watchdog (``SKY_MINI_DISABLE=memguard``: off)."""
        return self.memory_mechanism_for(job) == "watchdog" and memguard.enabled(
            self.config.disabled
        )

    def reap_children(self) -> None:
        for pid, status, peak in procs.reap_any_with_rusage():
            if self.ready is not None and pid == self.ready.pid:
                self.ready.close()  # it died waiting; the next job is forked when it comes
                self.ready = None
                continue
            if self.job is not None:
                # Every child of this executor is the job or one of its orphans.
                self.job.peak_bytes = max(self.job.peak_bytes, peak)
                if pid == self.job.pid:
                    self.job.status = status

    def enforce_limits(self, now: float) -> None:
        job = self.job
        if job is None or job.status is not None:
            return
        if job.kill_at is not None and now >= job.kill_at:
            self.kill_job_tree(job)
            job.kill_at = None
        if job.timeout_at is not None and now >= job.timeout_at and job.stop_reason is None:
            self.stop_job("timeout", 0.0 if job.phase == "setup" else 2.0)
            job.extra["timeout_seconds"] = job.task["resources"].get("timeout_seconds")
        if now >= job.next_sample or self.memory_mechanism_for(job) == "watchdog":
            self.sample_memory(job, now)

    def sample_memory(self, job: RunningJob, now: float) -> None:
        job.next_sample = now + PEAK_SAMPLE_INTERVAL_SECONDS
        # Every descendant of this executor belongs to the job (orphans reparent here).
        total = procs.tree_rss(os.getpid(), include_self=False)
        job.last_rss = total
        job.peak_bytes = max(job.peak_bytes, total)
        watchdog = self.memory_mechanism_for(job) == "watchdog"
        over = job.limit_bytes is not None and total > job.limit_bytes
        if watchdog and over and job.stop_reason is None:
            job.stop_reason = "memory_limit"
            self.kill_job_tree(job)

    def signal_job(self, job: RunningJob, sig: int) -> None:
        if job.pid:
            procs.signal_group(job.pid, sig)
        if job.cgroup is not None:
            for pid in job.cgroup.pids():
                procs.signal_pid(pid, sig)

    def kill_job_tree(self, job: RunningJob | None) -> None:
        """SIGKILL the job's cgroup, its process group and every descendant we still have."""
        if job is not None:
            if job.cgroup is not None:
                job.cgroup.kill()
            if job.pid:
                procs.signal_group(job.pid, signal.SIGKILL)
        if "subreaper" not in self.config.disabled:
            procs.kill_descendants(os.getpid())

    def advance_job(self) -> bool:
        """Move the job on once its process has exited; True when the job is over."""
        job = self.job
        if job is None or job.status is None:
            return False
        returncode = procs.returncode_from_status(job.status)
        if (
            job.phase == "setup"
            and returncode == 0
            and job.stop_reason is None
            and job.task.get("run") is not None  # a setup-only task ends here
        ):
            job.phase = "run"
            self.spawn_phase(job)
            return False
        # The main process is gone: nothing of the job may outlive it.
        self.kill_job_tree(job)
        self.reap_children()
        result = self.classify(job, returncode)
        self.release_cgroup(job)
        send_message(self.evt_fd, {"event": "finished", "job_id": job.job_id, **result})
        self.job = None
        return True

    def classify(self, job: RunningJob, returncode: int) -> dict[str, Any]:
        """Turn how the job ended into a status, reason and reason code."""
        peak = job.peak_bytes
        oom_kills: int | None = None
        if job.cgroup is not None:
            peak = max(peak, job.cgroup.peak_memory_bytes() or 0)
            oom_kills = job.cgroup.oom_kills_since_start()
        vmstat_end = procs.read_vmstat_oom_kills()
        vmstat_delta = (
            vmstat_end - job.vmstat_oom_start
            if vmstat_end is not None and job.vmstat_oom_start is not None
            else None
        )
        exit_code = exit_code_for(returncode)
        result: dict[str, Any] = {"exit_code": exit_code, "peak_memory_bytes": peak or None}
        killed_by = -returncode if returncode < 0 else None
        limit = job.limit_bytes
        phase = "setup" if job.phase == "setup" else "job"

        def done(status: JobStatus, code: ReasonCode | None, reason: str | None) -> dict[str, Any]:
            result.update(
                status=status.value, reason_code=code.value if code else None, reason=reason
            )
            return result

        from sky_mini.cgroups import classify_memory_death

        memory_death = classify_memory_death(limit, peak or None, oom_kills, killed_by)
        if (
            job.stop_reason is None
            and memory_death is None
            and self.uses_data_limit(job)
            and memguard.allocation_refused(job.log_path, job.log_start)
        ):
            return done(
                JobStatus.KILLED,
                ReasonCode.MEMORY_LIMIT,
                f"out of memory: an allocation over the limit {format_size(limit)} was refused "
                f"(watchdog, RLIMIT_DATA; peak {format_size(peak)}) — raise resources.memory",
            )
        if job.stop_reason == "memory_limit" or memory_death == "memory_limit":
            used = format_size(max(peak, limit or 0))
            return done(
                JobStatus.KILLED,
                ReasonCode.MEMORY_LIMIT,
                f"out of memory: used {used}, limit {format_size(limit)} "
                f"({self.memory_mechanism_for(job)}) — raise resources.memory",
            )
        if memory_death == "oom":
            return done(
                JobStatus.KILLED,
                ReasonCode.OOM,
                f"out of memory: killed by the kernel's OOM killer (job cgroup oom_kill "
                f"+{oom_kills}, peak {format_size(peak)}); the machine or container ran out of "
                "memory — give it more memory or set resources.memory on big jobs",
            )
        if job.stop_reason == "timeout":
            return done(
                JobStatus.KILLED,
                ReasonCode.TIMEOUT,
                f"timed out after {job.extra.get('timeout_seconds')}s "
                "(resources.timeout) — raise it or make the job faster",
            )
        if job.stop_reason == "cancel":
            return done(JobStatus.CANCELLED, ReasonCode.CANCELLED, "cancelled by user")
        if job.stop_reason == "group":  # an auxiliary task of a job group (server/groups.py)
            return done(
                JobStatus.CANCELLED,
                ReasonCode.GROUP_DONE,
                "stopped: every primary task of its job group ended (termination_delay)",
            )
        if job.stop_reason == "shutdown":
            return done(
                JobStatus.KILLED,
                ReasonCode.SHUTDOWN,
                "the server shut down while the job ran; submit it again",
            )
        if killed_by == signal.SIGKILL and vmstat_delta:
            return done(
                JobStatus.KILLED,
                ReasonCode.OOM,
                f"out of memory: killed by SIGKILL while the kernel's OOM killer fired "
                f"(/proc/vmstat oom_kill +{vmstat_delta}); give the machine more memory",
            )
        if killed_by == signal.SIGKILL:
            return done(
                JobStatus.KILLED,
                ReasonCode.OOM,
                "killed by SIGKILL, which sky-mini did not send: most likely the kernel's OOM "
                "killer (check 'dmesg'); set resources.memory to get a clear limit",
            )
        if returncode == 0:
            return done(JobStatus.SUCCEEDED, None, None)
        status = JobStatus.FAILED_SETUP if phase == "setup" else JobStatus.FAILED
        if killed_by is not None:
            name = signal.Signals(killed_by).name if killed_by in signal.valid_signals() else ""
            return done(
                status,
                ReasonCode.SIGNAL,
                f"{phase} killed by signal {killed_by} {name}".rstrip()
                + f"; see its log: sky-mini jobs logs {job.job_id}",
            )
        code = ReasonCode.SETUP_FAILED if phase == "setup" else ReasonCode.EXIT_CODE
        return done(
            status,
            code,
            f"{phase} exited with code {exit_code}; see its log: sky-mini jobs logs {job.job_id}",
        )

    # -- the server is gone -------------------------------------------------------------

    def handle_server_gone(self, why: str) -> None:
        job = self.job
        if job is not None:
            self.log(job, f"sky-mini: {why}; killing this job")
        self.kill_job_tree(job)
        self.reap_children()
        if job is not None and job.cgroup is not None and job.cgroup is not self.slot:
            job.cgroup.remove()
        self.discard_slot()

    def log(self, job: RunningJob, line: str) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(job.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)


def executor_main(config: ExecutorConfig, cmd_fd: int, evt_fd: int) -> int:
    """The executor's life in its tied child (see ``tied.fork_tied``)."""
    executor = Executor(config, cmd_fd, evt_fd)
    executor.signals.install()
    return executor.run()
