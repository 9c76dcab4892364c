"""LocalBackend: jobs run in named executor processes forked by this server.

Each executor gets two pipes: a command pipe whose write end only the server holds (its EOF
tells the executor the server is gone) and an event pipe back. Executors are forked from the
main thread only, because ``PR_SET_PDEATHSIG`` fires when the forking *thread* exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sky_mini import procs
from sky_mini.models import JobRecord, JobStatus, ReasonCode
from sky_mini.server.backends.base import BackendEvent, infra_kind
from sky_mini.server.backends.local.executor import ExecutorConfig, executor_main
from sky_mini.server.channel import LineReader, send_message
from sky_mini.server.tied import fork_tied

log = logging.getLogger("sky_mini.server")

RESTART_WINDOW_SECONDS = 60.0
MAX_RESTARTS_IN_WINDOW = 20


@dataclass
class ExecutorHandle:
    name: str
    pid: int = 0
    create_time: float | None = None
    cmd_w: int = -1
    events: LineReader | None = None
    job_id: int | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    alive: bool = False
    vmstat_at_launch: int | None = None
    job_pgid: int | None = None
    job_cgroups: list[str] = field(default_factory=list)


class LocalBackend:
    name = "local"

    def __init__(
        self,
        count: int,
        *,
        cgroup_caps: Any,
        cgroup_base: str,
        memory_mechanism: str,
        disabled: frozenset[str],
        launcher: str | None = None,
    ) -> None:
        self.executors = [ExecutorHandle(name=f"job-{i}") for i in range(count)]
        self.cgroup_caps = cgroup_caps
        self.cgroup_base = cgroup_base
        self.memory_mechanism = memory_mechanism
        self.disabled = disabled
        self.launcher = launcher  # the native job launcher (``launcher``), or None
        self.shutting_down = False
        # Called with an event fd just before it is closed, so the server's selector
        # forgets it: a replacement executor's pipe may reuse the same number.
        self.on_close: Callable[[int], None] | None = None

    # -- executors ------------------------------------------------------------------

    def owns(self, record: JobRecord) -> bool:
        return infra_kind(record.infra) == self.name

    def start(self) -> None:
        for handle in self.executors:
            self.fork_executor(handle)

    def reattach(self, records: list[JobRecord]) -> list[int]:
        """Nothing to re-attach: executors die with their server. Kill what is left."""
        for record in records:
            if procs.is_same_process(record.pid, record.pid_create_time):
                kill_job_leftovers(record.pgid, record.cgroup_paths)
        return []

    def fork_executor(self, handle: ExecutorHandle) -> None:
        config = ExecutorConfig(
            name=handle.name,
            server_pid=os.getpid(),
            cgroup_caps=self.cgroup_caps,
            cgroup_base=self.cgroup_base,
            memory_mechanism=self.memory_mechanism,
            disabled=self.disabled,
            launcher=self.launcher,
        )
        pid, cmd_w, evt_r = fork_tied(
            f"executor {handle.name}",
            self.disabled,
            lambda cmd_fd, evt_fd: executor_main(config, cmd_fd, evt_fd),
        )
        handle.pid = pid
        handle.create_time = procs.process_create_time(pid)
        handle.cmd_w = cmd_w
        handle.events = LineReader(evt_r)
        handle.started_at = time.time()
        handle.alive = True
        handle.job_id = None

    def close_handle(self, handle: ExecutorHandle) -> None:
        if handle.cmd_w >= 0:
            with contextlib.suppress(OSError):
                os.close(handle.cmd_w)
            handle.cmd_w = -1
        if handle.events is not None:
            if self.on_close is not None:
                self.on_close(handle.events.fd)
            with contextlib.suppress(OSError):
                os.close(handle.events.fd)
            handle.events = None

    def filenos(self) -> list[int]:
        return [h.events.fd for h in self.executors if h.events is not None and not h.events.eof]

    def free_slots(self) -> int:
        if self.shutting_down:
            return 0
        return sum(1 for h in self.executors if h.alive and h.job_id is None)

    def busy_executor(self, job_id: int) -> ExecutorHandle | None:
        for handle in self.executors:
            if handle.job_id == job_id:
                return handle
        return None

    # -- jobs ---------------------------------------------------------------------------

    def launch(self, job: JobRecord, payload: dict[str, Any]) -> str:
        for handle in self.executors:
            if handle.alive and handle.job_id is None:
                if send_message(handle.cmd_w, {"op": "run", "job": payload}):
                    handle.job_id = job.id
                    handle.vmstat_at_launch = procs.read_vmstat_oom_kills()
                    handle.job_pgid = None
                    handle.job_cgroups = []
                    return handle.name
                handle.alive = False
        raise RuntimeError("no free executor")  # the caller checked free_slots()

    def stop(self, job_id: int, reason: str, grace: float) -> None:
        handle = self.busy_executor(job_id)
        if handle is not None:
            send_message(
                handle.cmd_w, {"op": "stop", "job_id": job_id, "reason": reason, "grace": grace}
            )

    def poll(self) -> list[BackendEvent]:
        events: list[BackendEvent] = []
        for handle in self.executors:
            if handle.events is None:
                continue
            for message in handle.events.read_messages():
                event = self.event_from(handle, message)
                if event is not None:
                    events.append(event)
        return events

    def event_from(self, handle: ExecutorHandle, message: dict[str, Any]) -> BackendEvent | None:
        kind = message.get("event")
        job_id = message.get("job_id")
        if not isinstance(job_id, int) or job_id != handle.job_id:
            return None
        if kind == "started":
            handle.job_pgid = message.get("pgid")
            handle.job_cgroups = list(message.get("cgroup_paths") or [])
        elif kind == "finished":
            handle.job_id = None
            handle.job_pgid = None
        else:
            return None
        data = {k: v for k, v in message.items() if k not in ("event", "job_id")}
        data["executor"] = handle.name
        return BackendEvent(kind=str(kind), job_id=job_id, data=data)

    def child_exited(self, pid: int, status: int) -> list[BackendEvent]:
        for handle in self.executors:
            if handle.pid == pid and handle.alive:
                return self.handle_executor_death(handle, status)
        return []

    def handle_executor_death(self, handle: ExecutorHandle, status: int) -> list[BackendEvent]:
        """An executor died: clean up its job's processes and report the job's end."""
        # Messages it sent just before dying still count (e.g. its job's "finished").
        events = self.poll()
        handle.alive = False
        self.close_handle(handle)
        returncode = procs.returncode_from_status(status)
        if not self.shutting_down:
            log.warning(
                "executor %s (pid %d) died: %s",
                handle.name,
                handle.pid,
                describe_returncode(returncode),
            )
        if handle.job_id is None:
            return events
        job_id = handle.job_id
        handle.job_id = None
        kill_job_leftovers(handle.job_pgid, handle.job_cgroups)
        vmstat_now = procs.read_vmstat_oom_kills()
        oom = (
            returncode == -signal.SIGKILL
            and vmstat_now is not None
            and handle.vmstat_at_launch is not None
            and vmstat_now > handle.vmstat_at_launch
        )
        if oom:
            code = ReasonCode.OOM
            reason = (
                f"out of memory: the kernel's OOM killer killed executor {handle.name} while "
                "it ran this job (/proc/vmstat oom_kill rose); the machine is short of memory"
            )
        else:
            code = ReasonCode.SUPERVISOR_LOST
            reason = (
                f"its executor {handle.name} (pid {handle.pid}) died "
                f"({describe_returncode(returncode)}); the job was stopped — submit it again"
            )
        events.append(
            BackendEvent(
                kind="finished",
                job_id=job_id,
                data={
                    "status": JobStatus.KILLED.value,
                    "reason": reason,
                    "reason_code": code.value,
                    "exit_code": None,
                    "executor": handle.name,
                },
            )
        )
        return events

    def maintain(self) -> list[str]:
        if self.shutting_down:
            return []
        notes = []
        now = time.time()
        for handle in self.executors:
            if handle.alive:
                continue
            handle.restart_times = [
                t for t in handle.restart_times if now - t < RESTART_WINDOW_SECONDS
            ]
            if len(handle.restart_times) >= MAX_RESTARTS_IN_WINDOW:
                continue  # crash loop: leave it down; api status reports degraded
            handle.restart_times.append(now)
            handle.restarts += 1
            self.fork_executor(handle)
            notes.append(f"forked a replacement executor {handle.name} (pid {handle.pid})")
        return notes

    def components(self) -> list[dict[str, Any]]:
        return [
            {
                "name": f"executor {h.name}",
                "kind": "job-executor",
                "pid": h.pid if h.alive else None,
                "create_time": h.create_time if h.alive else None,
                "state": ("busy" if h.job_id is not None else "idle") if h.alive else "dead",
                "job_id": h.job_id,
                "started_at": h.started_at,
                "restarts": h.restarts,
                "should_run": not self.shutting_down,
            }
            for h in self.executors
        ]

    def shutdown(self, grace: float) -> None:
        self.shutting_down = True
        for handle in self.executors:
            if handle.alive:
                send_message(handle.cmd_w, {"op": "exit", "grace": grace})

    def close_idle_pipes(self) -> None:
        """During shutdown: an executor with no job gets EOF and exits."""
        for handle in self.executors:
            if handle.alive and handle.job_id is None and handle.cmd_w >= 0:
                with contextlib.suppress(OSError):
                    os.close(handle.cmd_w)
                handle.cmd_w = -1

    def is_stopped(self) -> bool:
        return not any(h.alive for h in self.executors)

    def force_kill(self) -> None:
        for handle in self.executors:
            if handle.alive:
                procs.signal_pid(handle.pid, signal.SIGKILL)
                kill_job_leftovers(handle.job_pgid, handle.job_cgroups)


def kill_job_leftovers(pgid: int | None, cgroup_paths: list[str]) -> None:
    """SIGKILL what is left of a job whose executor is gone: its cgroups and its group."""
    for path in cgroup_paths:
        kill_file = os.path.join(path, "cgroup.kill")
        if os.path.exists(kill_file):
            with contextlib.suppress(OSError), open(kill_file, "w") as handle:
                handle.write("1")
            continue
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as handle:
            for line in handle:
                if line.strip().isdigit():
                    procs.signal_pid(int(line), signal.SIGKILL)
    if pgid:
        procs.signal_group(pgid, signal.SIGKILL)


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return f"killed by signal {-returncode} {name}"
    return f"exited with code {returncode}"
