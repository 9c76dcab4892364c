"""The job process between ``fork`` and ``exec``, and the one an idle executor keeps ready.

Forking the executor (a ~20 MB Python process) costs ~5 ms here, against ~2 ms for the
whole ``bash -c true`` it then runs. So an idle executor keeps one *ready child*: forked
ahead of time, it has already done the part of becoming a job that does not depend on the
job (its own session, the raised OOM score, the parent-death signal, default signals,
every inherited descriptor but its spec pipe closed), then blocks reading a JSON *spec*
from a pipe. When a job arrives the executor writes the spec; the child joins the job's
cgroups, sets its memory backstop, opens the log and execs the job's shell. Without a ready
child (it died, a second phase, ``SKY_MINI_DISABLE=prefork``) the executor forks as before
and the child does the same two halves at once.

Where the native launcher exists (``launcher``, ``sky_mini/native/joblaunch.c``) the ready
child is that small program instead, started with ``posix_spawn``: the same two halves in
C, the spec as NUL-separated fields (:func:`encode_spec`) instead of JSON. A job with
``file_mounts`` (Python links them), or a spec the launcher cannot carry, takes the fork.

A ready child never outlives its executor: the parent-death signal (SIGKILL, after the
``getppid`` re-check) ends it with the executor, EOF on its spec pipe ends it when the
executor closes it, and while it waits it is the executor's only descendant, which
``kill_descendants`` reaches like any job process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any, NoReturn

from sky_mini import memguard, procs

JOB_OOM_SCORE_ADJ = 500
SPEC_READ_CHUNK = 65536
LAUNCHER_SPEC_FD = 3  # where joblaunch.c reads its spec
LAUNCHER_SPEC_MAGIC = "sky-mini-spec-1"


def prepare_job_process(
    executor_pid: int, disabled: frozenset[str], keep: int = -1, *, tied: bool = True
) -> None:
    """In a forked child: the job-independent half of becoming a job (see module doc)."""
    os.setsid()
    if "oom_score" not in disabled:
        procs.set_oom_score_adj(JOB_OOM_SCORE_ADJ)
    if tied:
        procs.set_parent_death_signal(signal.SIGKILL, executor_pid)  # exits if already gone
    procs.reset_signals_for_exec()
    procs.close_fds_except((0, 1, 2) if keep < 0 else (0, 1, 2, keep))


def become_job(spec: dict[str, Any]) -> NoReturn:
    """In the prepared child: join the job's groups, set its limits and log, exec its shell.

    ``spec``: ``command``, ``shell``, ``workdir``, ``log_path``, ``env``, ``procs_files``
    (cgroup.procs files to join), ``data_limit`` (RLIMIT_DATA bytes or None) and
    ``file_mounts`` (only on the job's first phase). Never returns.
    """
    try:
        if spec["procs_files"]:
            from sky_mini.cgroups import join_cgroup_files

            join_cgroup_files(spec["procs_files"])
        if spec["data_limit"] is not None:
            memguard.apply_data_limit(int(spec["data_limit"]))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        log_fd = os.open(spec["log_path"], flags, 0o600)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        procs.close_fds_except((0, 1, 2))
        workdir = spec["workdir"]
        try:
            os.chdir(workdir)
        except OSError as exc:
            os.write(2, f"sky-mini: cannot enter workdir {workdir}: {exc}\n".encode())
            os._exit(127)
        if spec.get("file_mounts"):
            from sky_mini.mounts import link_file_mounts

            try:
                link_file_mounts(spec["file_mounts"])
            except OSError as exc:
                os.write(2, f"sky-mini: cannot make file_mounts: {exc}\n".encode())
                os._exit(126)
        shell = spec["shell"]
        os.execve(shell, [shell, "-c", spec["command"]], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - the child must never return into Python
        with contextlib.suppress(BaseException):
            os.write(2, f"sky-mini: cannot start the job: {exc}\n".encode())
    os._exit(127)


def fork_job(spec: dict[str, Any], disabled: frozenset[str]) -> int:
    """Fork a job process for ``spec`` now (both halves in the child); return its PID."""
    executor_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            prepare_job_process(executor_pid, disabled)
        except BaseException:  # noqa: BLE001 - never return into the executor's loop
            os._exit(127)
        become_job(spec)
    return pid


def encode_spec(spec: dict[str, Any]) -> bytes | None:
    """``spec`` as the native launcher reads it; None where it cannot carry it (file
    mounts, a NUL in a value, an environment name with ``=``): the caller forks instead."""
    if spec.get("file_mounts"):
        return None
    env = spec["env"]
    if any(not name or "=" in name for name in env):
        return None
    limit = spec["data_limit"]
    fields = [
        LAUNCHER_SPEC_MAGIC,
        spec["shell"],
        spec["command"],
        spec["workdir"],
        spec["log_path"],
        "" if limit is None else str(int(limit)),
        str(len(spec["procs_files"])),
        *spec["procs_files"],
        *(f"{name}={value}" for name, value in env.items()),
    ]
    encoded = [os.fsencode(field) for field in fields]
    if any(b"\0" in field for field in encoded):
        return None
    return b"\0".join(encoded) + b"\0"


class ReadyChild:
    """A job process forked ahead of its job, waiting for its spec (see module doc)."""

    def __init__(
        self, pid: int, spec_fd: int, joined: tuple[str, ...] = (), *, native: bool = False
    ) -> None:
        self.pid = pid
        self.spec_fd = spec_fd
        self.joined = joined
        """The ``cgroup.procs`` files it joined before waiting (the executor's slot)."""
        self.native = native
        """It is the native launcher (reads :func:`encode_spec`), not a Python fork."""

    @classmethod
    def spawn(
        cls, launcher: str, disabled: frozenset[str], role: str, join: tuple[str, ...] = ()
    ) -> ReadyChild:
        """``posix_spawn`` the native launcher as the ready child; as :meth:`fork` otherwise.

        Raises OSError when it cannot be started (the caller forks instead).
        """
        tied = "prefork_ties" not in disabled
        oom = "" if "oom_score" in disabled else str(JOB_OOM_SCORE_ADJ)
        spec_r, spec_w = os.pipe()
        try:
            if spec_r == LAUNCHER_SPEC_FD:  # dup2 onto itself would keep close-on-exec
                spec_r, old = os.dup(spec_r), spec_r
                os.close(old)
            argv = [procs.title_of(role), str(os.getpid()), oom, "1" if tied else "0", *join]
            pid = os.posix_spawn(
                launcher,
                argv,
                {},
                file_actions=[(os.POSIX_SPAWN_DUP2, spec_r, LAUNCHER_SPEC_FD)],
            )
        except BaseException:
            os.close(spec_w)
            raise
        finally:
            os.close(spec_r)
        return cls(pid, spec_w, join, native=True)

    @classmethod
    def fork(cls, disabled: frozenset[str], role: str, join: tuple[str, ...] = ()) -> ReadyChild:
        """Fork it, titled for ``role`` (``executor job-0: ready``) while it waits, in the
        groups of ``join`` (``cgroup.procs`` files: the move is slow, see ``cgroups.slot``).

        ``SKY_MINI_DISABLE=prefork_ties`` (test-only negative control): no parent-death
        signal, and EOF on the spec pipe is ignored, so it outlives its executor.
        """
        tied = "prefork_ties" not in disabled
        executor_pid = os.getpid()
        spec_r, spec_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(spec_w)
                prepare_job_process(executor_pid, disabled, keep=spec_r, tied=tied)
                procs.set_title(role)
                if join:
                    from sky_mini.cgroups import join_cgroup_files

                    join_cgroup_files(join)
                spec = read_spec(spec_r)
                while spec is None and not tied:
                    signal.pause()
            except BaseException:  # noqa: BLE001 - never return into the executor's loop
                os._exit(127)
            if spec is None:
                os._exit(0)  # the executor let it go, or is gone
            become_job(spec)
        os.close(spec_r)
        return cls(pid, spec_w, join)

    def start(self, spec: dict[str, Any]) -> bool:
        """Hand the child its job; False if it is gone or cannot take this spec (the caller
        forks one instead; this one reads EOF and exits)."""
        if self.native:
            encoded = encode_spec(spec)
            if encoded is None:
                self.close()
                return False
            payload = encoded
        else:
            payload = json.dumps(spec, separators=(",", ":")).encode()
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(self.spec_fd, view) :]
        except OSError:  # EPIPE: it died while it waited
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        """Close the spec pipe: a child still waiting reads EOF and exits."""
        if self.spec_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.spec_fd)
            self.spec_fd = -1


def read_spec(fd: int) -> dict[str, Any] | None:
    """Block until the executor writes a spec and closes the pipe; None on a bare EOF."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, SPEC_READ_CHUNK)
        except InterruptedError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    if not chunks:
        return None
    spec = json.loads(b"".join(chunks))
    return spec if isinstance(spec, dict) else None
