"""Graceful shutdown: TERM, grace, KILL for every job; then release everything, lock last."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING

from sky_mini.models import JobStatus, ReasonCode

if TYPE_CHECKING:
    from sky_mini.server.main import Server

log = logging.getLogger("sky_mini.server")

SHUTDOWN_EXTRA_SECONDS = 5.0


def initiate_shutdown(server: Server, why: str) -> None:
    if server.stop_requested is not None:
        return
    server.stop_requested = why
    server.stopping_since = server.clock()
    grace = server.settings.kill_grace_seconds
    running = [j for j, r in server.jobs.items() if r.status.is_active and r.infra == "local"]
    if running:
        log.info("stopping %d running job(s): SIGTERM now, SIGKILL after %gs", len(running), grace)
    if server.services is not None:
        server.services.shutdown(grace)
    if server.http is not None:
        server.http.shutdown()
    if server.backend is not None:
        server.backend.shutdown(grace)
    server.status_dirty = True


def shutdown_complete(server: Server, now: float) -> bool:
    if server.stop_requested is None or server.backend is None:
        return False
    from sky_mini.server.backends.local import LocalBackend

    backend = server.backend
    if isinstance(backend, LocalBackend):
        backend.close_idle_pipes()
    assert server.stopping_since is not None
    deadline = server.stopping_since + server.settings.kill_grace_seconds + SHUTDOWN_EXTRA_SECONDS
    if now > deadline and isinstance(backend, LocalBackend) and not backend.is_stopped():
        log.warning("executors did not stop in time: killing them")
        backend.force_kill()
    if now > deadline and server.http is not None:
        server.http.force_kill()
    services_done = server.services is None or server.services.is_stopped()
    http_done = server.http is None or server.http.is_stopped()
    # A hook already sending its mail may finish, within the same bound as the jobs.
    hooks_done = not server.hooks.running or now > deadline
    return backend.is_stopped() and services_done and http_done and hooks_done


def cleanup(server: Server) -> None:
    """Record what is left and release everything (the lock last)."""
    now = server.clock()
    server.record_outcomes(now)  # jobs that ended on the last tick
    for record in list(server.jobs.values()):
        if record.status.is_active and record.infra == "local":  # Slurm's jobs run on
            record.finish(
                JobStatus.KILLED,
                now=now,
                reason="the server shut down while the job ran; submit it again",
                reason_code=ReasonCode.SHUTDOWN.value,
                exit_code=None,
            )
            server.save_job(record)
            server.release_job_extras(record.id)
            del server.jobs[record.id]
            server.active_dirty = True
    with contextlib.suppress(OSError):
        server.write_active_index(force=True)
    server.start_log.close()  # every job it names has its final record now
    server.hooks.kill_all()
    if server.cgroup_caps is not None:
        from sky_mini.cgroups import remove_base

        with contextlib.suppress(OSError):
            remove_base(server.cgroup_caps, f"sky-mini-{server.key}")
    with contextlib.suppress(OSError):
        server.write_status(force=True, state="stopped")
    for fd in (*server.wake_fds, *server.signal_fds):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    if server.lock_fd >= 0:
        os.close(server.lock_fd)
        server.lock_fd = -1


def spawn_successor(server: Server) -> None:
    """Start a fresh detached server (our lock is already released) for late work."""
    import subprocess

    argv = [sys.executable, "-m", "sky_mini", "serve", "--foreground", "--detached"]
    idle = "off" if server.idle_minutes is None else f"{server.idle_minutes:g}"
    argv += ["--idle-minutes", idle]
    log.info("work arrived during the idle stop: starting a successor server")
    with contextlib.suppress(OSError):
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
