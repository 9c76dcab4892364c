"""Config ``hooks: {on_failure, on_finish}``: commands the server runs when a job ends.

A hook is a detached ``/bin/sh -c CMD`` in its own session, outside every job's cgroup and
executor slot, with ``SKY_MINI_JOB_*`` in its environment and its output appended to
``$SKY_MINI_HOME/hooks.log``. The tick loop never waits for one: it is reaped with the
server's other children, and killed (its whole process group) once ``hooks.timeout``
passes. A hook's failure is logged; it never changes the job's record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from sky_mini import procs
from sky_mini.models import JobRecord, JobStatus

log = logging.getLogger("sky_mini.server")

HOOK_SHELL = "/bin/sh"


@dataclass
class RunningHook:
    proc: Any  # subprocess.Popen[bytes]; reaped by the server's waitpid, not by Popen
    job_id: int
    kind: str
    deadline: float
    killed: bool = False


class HookRunner:
    def __init__(
        self,
        *,
        on_failure: str | None,
        on_finish: str | None,
        timeout: float,
        log_path: str,
        marker_prefix: str,
        detach: bool = True,
    ) -> None:
        self.commands = {"on_failure": on_failure, "on_finish": on_finish}
        self.timeout = timeout
        self.log_path = log_path
        self.marker_prefix = marker_prefix
        self.running: dict[int, RunningHook] = {}
        # Test-only negative control (SKY_MINI_DISABLE=hook_detach): the loop waits for
        # each hook, as a naive runner would, and a hanging hook stalls dispatch.
        self.detach = detach

    def job_ended(self, record: JobRecord, now: float) -> None:
        """Start the hooks that apply to this finished job (never blocks)."""
        if not record.status.is_terminal:
            return
        failed = record.status is not JobStatus.SUCCEEDED
        for kind in ("on_failure", "on_finish"):
            command = self.commands[kind]
            if command and (kind == "on_finish" or failed):
                self.spawn(kind, command, record, now)

    def hook_env(self, record: JobRecord, kind: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SKY_MINI_JOB_ID": str(record.id),
                "SKY_MINI_JOB_NAME": record.name,
                "SKY_MINI_JOB_STATUS": record.status.value,
                "SKY_MINI_JOB_REASON": record.reason or "",
                "SKY_MINI_JOB_REASON_CODE": record.reason_code or "",
                "SKY_MINI_JOB_EXIT_CODE": "" if record.exit_code is None else str(record.exit_code),
                "SKY_MINI_JOB_LOG": record.log_path,
                "SKY_MINI_JOB_ATTEMPT": str(record.attempt),
                "SKY_MINI_HOOK": kind,
                # A server that dies leaves no hook running: the next one sweeps this marker.
                procs.MARKER_ENV: procs.marker_for(self.marker_prefix, f"hook-{record.id}"),
            }
        )
        return env

    def spawn(self, kind: str, command: str, record: JobRecord, now: float) -> None:
        import subprocess

        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            out = os.open(self.log_path, flags, 0o600)
        except OSError as exc:
            log.warning(
                "hook %s for job %d not run: cannot open %s: %s",
                kind,
                record.id,
                self.log_path,
                exc.strerror,
            )
            return
        try:
            proc = subprocess.Popen(
                [HOOK_SHELL, "-c", command],
                env=self.hook_env(record, kind),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        except OSError as exc:
            log.warning("hook %s for job %d could not start: %s", kind, record.id, exc)
            return
        finally:
            os.close(out)
        self.running[proc.pid] = RunningHook(proc, record.id, kind, now + self.timeout)
        log.info("hook %s for job %d started (pid %d)", kind, record.id, proc.pid)
        if not self.detach:
            try:
                proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.running[proc.pid].killed = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self.report(self.running.pop(proc.pid), proc.returncode)

    def child_exited(self, pid: int, status: int) -> bool:
        """The server reaped ``pid``; True if it was a hook (its result is logged)."""
        hook = self.running.pop(pid, None)
        if hook is None:
            return False
        code = os.waitstatus_to_exitcode(status)
        hook.proc.returncode = code  # reaped already: tell Popen, so it never waits
        self.report(hook, code)
        return True

    def report(self, hook: RunningHook, code: int) -> None:
        if hook.killed:
            log.warning(
                "hook %s for job %d killed after %gs (hooks.timeout); see %s",
                hook.kind,
                hook.job_id,
                self.timeout,
                self.log_path,
            )
        elif code != 0:
            log.warning(
                "hook %s for job %d failed (exit code %d); the job is unchanged; see %s",
                hook.kind,
                hook.job_id,
                code,
                self.log_path,
            )
        else:
            log.info("hook %s for job %d done", hook.kind, hook.job_id)

    def enforce_timeouts(self, now: float) -> None:
        """Kill the process group of every hook past its deadline (reaped on a later tick).

        The PID is still ours to signal: an unreaped child's PID cannot be reused.
        """
        for pid, hook in self.running.items():
            if not hook.killed and now >= hook.deadline:
                hook.killed = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)

    def pids(self) -> list[int]:
        return list(self.running)

    def kill_all(self) -> None:
        """At server exit: no hook outlives its supervisor."""
        for pid in self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
