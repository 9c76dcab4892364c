"""What the CLI does, as functions that return data (rendering lives in ``output``).

The client never imports the server. It meets it only in files: it creates job records and
intents, wakes the server through a FIFO, and reads the server's status snapshot.
Heavy modules (psutil, yaml) are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any, TypeVar

from sky_mini.errors import NoServerError, SkyMiniError, UsageError
from sky_mini.models import JobRecord, JobStatus, ReasonCode
from sky_mini.paths import Paths, check_home_trust, ensure_dirs, get_paths
from sky_mini.state import LockTimeout, Store, flocked, is_locked, read_json
from sky_mini.state import read_bytes as read_bytes_nofollow

SERVER_START_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05
FOLLOW_POLL_SECONDS = 0.1
DEFAULT_QUEUE_LIMIT = 20
MAX_JOB_ID_DIGITS = 18  # fits in a signed 64-bit integer
_T = TypeVar("_T")


def open_home(*, create: bool = True) -> Paths:
    """The home's paths, created 0700 and checked for trust; errors name the path."""
    paths = get_paths()
    problem = check_home_trust(paths.home)
    if problem:
        raise SkyMiniError(f"refusing to use {paths.home}: {problem}")
    if create:
        try:
            ensure_dirs(paths)
        except PermissionError as exc:
            raise SkyMiniError(
                f"cannot create {exc.filename or paths.home}: permission denied; "
                "set SKY_MINI_HOME to a directory you own"
            ) from None
        except OSError as exc:
            raise SkyMiniError(
                f"cannot create {exc.filename or paths.home}: {exc.strerror}; "
                "check the disk and SKY_MINI_HOME"
            ) from None
    return paths


# -- the server --------------------------------------------------------------------------


def server_running(paths: Paths) -> bool:
    """True while a server holds the home's server lock (the kernel drops it on death)."""
    return is_locked(paths.server_lock)


def wake_server(paths: Paths) -> bool:
    """Poke the server's tick loop. False when no server is reading the FIFO."""
    try:
        fd = os.open(paths.wake_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT, errno.ELOOP):
            return False
        raise
    try:
        os.write(fd, b"w")
    except BlockingIOError:
        pass  # the pipe is full of wake-ups already
    finally:
        os.close(fd)
    return True


def wake_early(paths: Paths) -> None:
    """A new record is readable: poke the server now, while the submitter still fsyncs the
    directory (``jobs launch`` pokes again, or starts a server, once the ID is durable)."""
    with contextlib.suppress(OSError):
        wake_server(paths)


def read_status(paths: Paths) -> dict[str, Any] | None:
    """The running server's status snapshot, or None when no server runs."""
    if not server_running(paths):
        return None
    data = read_json(paths.server_status, quarantine_bad=False)
    if not isinstance(data, dict):
        return None
    # A server that has just taken the lock has not yet replaced its dead predecessor's
    # snapshot, which still says "running": only the lock holder's own snapshot counts.
    if data.get("pid") != read_lock_pid(paths):
        return None
    return data


def read_lock_pid(paths: Paths) -> int | None:
    """The PID the server wrote into its lock file (None if unreadable)."""
    try:
        raw = read_bytes_nofollow(paths.server_lock)
        return int(raw.strip()) if raw else None
    except (OSError, ValueError):
        return None


def start_server(
    paths: Paths,
    *,
    idle_minutes: float | None,
    executors: int | None = None,
    timeout: float = SERVER_START_TIMEOUT_SECONDS,
    http_listen: str | None = None,
) -> tuple[int, bool]:
    """Start a background server unless one runs; return (pid, started_by_us).

    Concurrent callers serialize on the start lock, so exactly one server is spawned even
    when 30 CLIs race; the server lock, not a PID file, says whether one runs.
    """
    try:
        with flocked(paths.start_lock, timeout=timeout):
            status = wait_for_status(paths, 0.0)
            if status is not None:
                return int(status["pid"]), False
            pid = spawn_server(
                paths, idle_minutes=idle_minutes, executors=executors, http_listen=http_listen
            )
            status = wait_for_healthy(paths, pid, timeout)
            return int(status["pid"]), True
    except LockTimeout:
        raise SkyMiniError(
            f"another sky-mini has been starting the server for {timeout:g}s; "
            f"see {paths.server_log}"
        ) from None


def spawn_server(
    paths: Paths,
    *,
    idle_minutes: float | None,
    executors: int | None,
    http_listen: str | None = None,
) -> int:
    argv = [sys.executable, "-m", "sky_mini", "serve", "--foreground", "--detached"]
    argv += ["--idle-minutes", "off" if idle_minutes is None else f"{idle_minutes:g}"]
    if executors is not None:
        argv += ["--executors", str(executors)]
    if http_listen is not None:
        argv += ["--http", http_listen]
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
    log_fd = os.open(paths.server_log, flags, 0o600)
    try:
        import subprocess  # lazily: only the CLI that starts a server needs it

        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    return proc.pid


def wait_for_status(paths: Paths, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(paths)
        if status is not None and status.get("state") == "running":
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_SECONDS)


def wait_for_healthy(paths: Paths, pid: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(paths)
        if status is not None and status.get("state") == "running":
            return status
        with contextlib.suppress(ChildProcessError):
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                if server_running(paths):
                    continue  # it found another server already running
                raise SkyMiniError(
                    f"the server exited during start-up (code {code >> 8}); "
                    f"last lines of {paths.server_log}:\n{tail_text(paths.server_log, 10)}"
                )
        time.sleep(POLL_SECONDS)
    raise SkyMiniError(
        f"the server did not become healthy within {timeout:g}s; see {paths.server_log}"
    )


def ensure_server(paths: Paths) -> None:
    """Wake the server, starting one in the background if none runs (auto-start)."""
    if wake_server(paths):
        return
    from sky_mini.config import load_settings

    settings = load_settings(paths)
    start_server(paths, idle_minutes=settings.idle_minutes)
    wake_server(paths)


SERVER_CHECK_SECONDS = 2.0
"""How often a waiting CLI checks that a server is still there to finish its jobs."""


class ServerKeeper:
    """For a CLI waiting on unfinished jobs: notice when no server is left to finish them.

    Without it, ``jobs wait`` on a job whose server was OOM-killed would block forever: the
    record stays RUNNING until a server reconciles it (KILLED, ``supervisor_lost``) or runs
    it (PENDING). The check is one non-blocking lock probe every ``SERVER_CHECK_SECONDS``.
    With ``revive`` (``jobs wait``, attached launch) it starts a new server; without it
    (``jobs logs``, which never starts one) it says once why the job is not moving.
    """

    def __init__(
        self, paths: Paths, *, revive: bool = True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        from sky_mini.follow import is_disabled

        self.paths = paths
        self.clock = clock
        self.next_check = clock() + SERVER_CHECK_SECONDS
        # Test-only negative control: a waiter that never replaces a dead server.
        self.revive = revive and not is_disabled("revive")
        self.warned = False

    def check(self) -> None:
        now = self.clock()
        if now < self.next_check:
            return
        self.next_check = now + SERVER_CHECK_SECONDS
        if server_running(self.paths):
            self.warned = False
            return
        if self.revive:
            print(
                f"sky-mini: the server for {self.paths.home} is gone; starting a new one",
                file=sys.stderr,
            )
            ensure_server(self.paths)
        elif not self.warned:
            self.warned = True
            print(
                f"sky-mini: no server is running for {self.paths.home}, so this job will not "
                "progress; start one with 'sky-mini api start' (still following)",
                file=sys.stderr,
            )


def stop_server(paths: Paths, timeout: float) -> int | None:
    """SIGTERM the server and wait for it to exit; return its PID, None if none ran."""
    import signal

    status = read_status(paths)
    if status is None:
        return None
    pid = int(status["pid"])
    from sky_mini.procs import is_same_process

    if not is_same_process(pid, status.get("create_time")):
        raise SkyMiniError(
            f"the server lock is held but pid {pid} in {paths.server_status} is not the "
            "server; not signalling it"
        )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while server_running(paths):
        if time.monotonic() > deadline:
            raise SkyMiniError(
                f"the server (pid {pid}) did not stop within {timeout:g}s; see {paths.server_log}"
            )
        time.sleep(POLL_SECONDS)
    # The lock goes a moment before the process: wait for its exit too (a zombie has exited).
    create_time = status.get("create_time")
    while is_same_process(pid, create_time) and not is_zombie(pid):
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
    return pid


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def tail_text(path: str, lines: int) -> str:
    try:
        return b"".join(tail_lines(path, lines)).decode(errors="replace").rstrip()
    except OSError:
        return "(no log)"


# -- jobs ----------------------------------------------------------------------------------


def submit_job(
    paths: Paths,
    task: dict[str, Any],
    name: str,
    *,
    env: dict[str, str] | None = None,
    fields: dict[str, Any] | None = None,
    secrets: dict[str, str] | None = None,
) -> JobRecord:
    """Durably record a PENDING job (``fields``: more record fields, e.g. ``queue``,
    ``after``, ``pipeline``). Secret values go to a 0600 side file written before the record
    (so the server never sees the job without them), and secret names are dropped from the
    recorded client environment."""
    store = Store(paths)
    build = record_builder(paths, task, name, env, fields, secrets)
    return with_store_errors(paths, lambda: store.create_job(build, lambda: wake_early(paths)))


def submit_unique_job(
    paths: Paths,
    task: dict[str, Any],
    name: str,
    *,
    fields: dict[str, Any] | None = None,
    secrets: dict[str, str] | None = None,
) -> tuple[JobRecord, bool]:
    """``--unique``: (the unfinished job named ``name``, True), or (a new record, False)."""
    from sky_mini.follow import is_disabled

    store = Store(paths)
    build = record_builder(paths, task, name, None, fields, secrets)
    locked = not is_disabled("unique_lock")
    return with_store_errors(
        paths,
        lambda: store.create_unique_job(
            name, build, check_under_lock=locked, on_visible=lambda: wake_early(paths)
        ),
    )


def record_builder(
    paths: Paths,
    task: dict[str, Any],
    name: str,
    env: dict[str, str] | None,
    fields: dict[str, Any] | None,
    secrets: dict[str, str] | None = None,
) -> Callable[[int], JobRecord]:
    hidden = set(task.get("secrets") or ())
    job_env = {k: v for k, v in (os.environ if env is None else env).items() if k not in hidden}
    now = time.time()

    def build(job_id: int) -> JobRecord:
        if secrets:
            from sky_mini.jobsecrets import write_secrets

            write_secrets(paths.job_secrets(job_id), dict(secrets))
        extra = dict(fields or {})
        if extra.get("group") and not extra["group"].get("id"):  # a job group's first job
            extra["group"] = {**extra["group"], "id": job_id}
        return JobRecord(
            id=job_id,
            task=task,
            name=name,
            log_path=paths.job_log(job_id),
            submitted_at=now,
            env=job_env,
            **extra,
        )

    return build


def with_store_errors(paths: Paths, create: Callable[[], _T]) -> _T:
    """Run ``create``; a full or read-only disk becomes a user error (nothing recorded)."""
    try:
        return create()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise SkyMiniError(
                f"no space left on device in {paths.home}; nothing was recorded. "
                "Free some space (or prune old jobs) and submit again"
            ) from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise SkyMiniError(
                f"cannot write in {paths.jobs_dir}: {exc.strerror}; nothing was recorded"
            ) from None
        raise


def check_jobs_exist(paths: Paths, job_ids: Iterable[int], flag: str) -> None:
    """Refuse (exit 2) an ID no record exists for, e.g. in ``--after``."""
    store = Store(paths)
    for job_id in job_ids:
        if store.load_job(job_id) is None:
            raise UsageError(
                f"{flag} {job_id}: no such job; see 'sky-mini jobs queue --all' for job IDs"
            )


def load_job(paths: Paths, job_id: int) -> JobRecord:
    record = Store(paths).load_job(job_id)
    if record is None:
        raise SkyMiniError(
            f"no job {job_id} in {paths.home}; list jobs with 'sky-mini jobs queue --all'"
        )
    return record


def list_jobs(paths: Paths, *, show_all: bool, limit: int | None) -> list[JobRecord]:
    """Unfinished jobs plus the most recent finished ones (``show_all``: every job).

    Reads O(limit + unfinished) files, not the whole history.
    """
    store = Store(paths)
    next_id = store.next_id()
    active, seen_through = store.read_active()
    if show_all:
        lowest = 1 if limit is None else max(1, next_id - limit)
        ids: Iterable[int] = range(next_id - 1, lowest - 1, -1)
    else:
        recent = limit or DEFAULT_QUEUE_LIMIT
        wanted = set(active) | set(range(max(1, next_id - recent), next_id))
        wanted |= set(range(seen_through + 1, next_id))
        ids = sorted(wanted, reverse=True)
    records = []
    for job_id in ids:
        record = store.load_job(job_id)
        if record is not None:
            records.append(record)
    if not show_all and limit is not None:
        unfinished = [r for r in records if not r.status.is_terminal]
        finished = [r for r in records if r.status.is_terminal][:limit]
        records = unfinished + finished
    return sorted(records, key=lambda r: r.id)


def request_cancel(paths: Paths, job_id: int) -> JobRecord:
    record = load_job(paths, job_id)
    if not record.status.is_terminal:
        Store(paths).add_intent("cancel", job_id)
    return record


def wait_for_jobs(
    paths: Paths,
    job_ids: list[int],
    timeout: float | None,
    on_done: Callable[[JobRecord], None] | None = None,
) -> list[JobRecord]:
    """Block until every job is terminal; raise on timeout.

    Reads records and sleeps on inotify between changes; the server is only checked for
    being alive (see :class:`ServerKeeper`).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(dict.fromkeys(job_ids))
    done: dict[int, JobRecord] = {}
    keeper = ServerKeeper(paths)
    with RecordWatcher(paths, pending) as watcher:
        while True:
            keeper.check()
            for job_id in list(pending):
                if not watcher.changed(job_id):
                    continue
                record = load_job(paths, job_id)
                if record.status.is_terminal:
                    done[job_id] = record
                    pending.remove(job_id)
                    if on_done is not None:
                        on_done(record)
            if not pending:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                waiting = ", ".join(str(j) for j in pending)
                raise SkyMiniError(f"timed out after {timeout:g}s waiting for job(s) {waiting}")
            watcher.wait(remaining)
    return [done[j] for j in job_ids]


class RecordWatcher:
    """Change detection on job records: inotify wake-ups, confirmed by (mtime_ns, size, inode).

    Records are replaced by rename, so each change is a new inode. ``wait`` sleeps until one
    of the watched records is replaced (or the poll interval passes where inotify is
    unavailable); ``changed`` tells which, by ``stat`` alone.
    """

    def __init__(self, paths: Paths, job_ids: Iterable[int] = ()) -> None:
        from sky_mini import follow

        self.paths = paths
        self.seen: dict[int, tuple[int, int, int]] = {}
        self.watcher = follow.open_watcher()
        self.watch(job_ids)

    def watch(self, job_ids: Iterable[int]) -> None:
        names = [os.path.basename(self.paths.job_record(j)) for j in job_ids]
        if names:
            with contextlib.suppress(FileNotFoundError):
                self.watcher.watch_dir(self.paths.jobs_dir, names)

    def changed(self, job_id: int) -> bool:
        try:
            st = os.stat(self.paths.job_record(job_id))
        except FileNotFoundError:
            return True
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self.seen.get(job_id) == key:
            return False
        self.seen[job_id] = key
        return True

    def wait(self, timeout: float | None) -> None:
        """Sleep until a watched record may have changed, at most ``timeout`` seconds."""
        from sky_mini.follow import SAFETY_WAKE_SECONDS

        limit = SAFETY_WAKE_SECONDS if timeout is None else min(timeout, SAFETY_WAKE_SECONDS)
        self.watcher.wait(limit)

    def close(self) -> None:
        self.watcher.close()

    def __enter__(self) -> RecordWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def follow_job(
    paths: Paths,
    job_id: int,
    out: IO[bytes],
    *,
    follow: bool = True,
    tail: int | None = None,
    keep_server: bool = False,
) -> JobRecord:
    """Copy the job's log to ``out`` (from ``tail`` lines back), following until the job ends.

    Reads the log file directly and learns the job's end from its record: no load on the
    server, and it works while the server is down. Output is copied as it is appended
    (inotify on the log and on the record; a short poll where inotify is unavailable).
    With ``keep_server`` (attached launch), a server that dies meanwhile is replaced;
    otherwise the follower only says, once, that no server is running.
    """
    from sky_mini import follow as following

    keeper = ServerKeeper(paths, revive=keep_server)

    with RecordWatcher(paths, [job_id]) as records:
        records.changed(job_id)  # note the version before loading it: no change slips by
        record = load_job(paths, job_id)
        position = 0
        if tail is not None:
            lines, position = following.read_tail(record.log_path, tail)
            for line in lines:
                out.write(line)
            out.flush()
        stream = following.FileStream(record.log_path, out, records.watcher, position)
        try:
            if not follow:
                stream.pump()
                return record

            def finished() -> bool:
                nonlocal record
                if records.changed(job_id):
                    record = load_job(paths, job_id)
                if record.status.is_terminal:
                    return True
                keeper.check()
                return False

            following.stream_until(stream, records.watcher, finished)
            return record
        finally:
            stream.close()


def copy_available(handle: IO[bytes], out: IO[bytes]) -> int:
    """Copy everything readable now from ``handle`` to ``out``; return the byte count."""
    from sky_mini.follow import copy_available as copy

    return copy(handle, out)


def tail_lines(path: str, count: int) -> list[bytes]:
    """The last ``count`` lines of a file, reading backwards in blocks (not the whole file)."""
    from sky_mini.follow import read_tail

    return read_tail(path, count)[0]


def exit_code_of(record: JobRecord) -> int:
    """The attached/logs/wait exit code of a finished job. An auxiliary task of a job group
    stopped because its primary tasks ended (``group_done``) ended as planned: 0."""
    if record.status is JobStatus.SUCCEEDED or record.reason_code == ReasonCode.GROUP_DONE.value:
        return 0
    if record.exit_code is not None and record.exit_code != 0:
        return record.exit_code
    return 1


def parse_job_id(raw: str) -> int:
    text = raw.strip()
    # ASCII digits only: str.isdigit() also accepts '²' and '١٢', which int() rejects or
    # silently reads as another job's ID. Bounded, so a huge number is not a file name.
    valid = text.isascii() and text.isdigit() and len(text) <= MAX_JOB_ID_DIGITS
    if not valid or int(text) < 1:
        raise UsageError(f"'{raw}' is not a job ID; job IDs are positive whole numbers like 42")
    return int(text)


def require_server(paths: Paths) -> dict[str, Any]:
    status = read_status(paths)
    if status is None:
        raise NoServerError(
            f"no sky-mini server is running for {paths.home}; start one with 'sky-mini api start'"
        )
    return status
