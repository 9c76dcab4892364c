"""The store: one JSON file per record, written atomically, guarded by file locks.

Rules (docs/ARCHITECTURE.md has the full table of who writes what):
- Every write goes to a temp file in the same directory, is fsynced, then ``os.replace``d over
  the target; the directory is fsynced where the write acknowledges user work.
- Locks are ``flock(2)`` locks: the kernel drops them when their holder dies, so a killed
  process can never leave a lock that blocks the next start. We call ``fcntl.flock``
  directly rather than the ``filelock`` package: same mechanism, but its import costs ~40 ms
  on the cron-facing submit path.
- Files are opened with ``O_NOFOLLOW``: a symlink planted in the home is never followed.
- An unreadable file is moved aside as ``<name>.corrupt-<time>`` with a warning, never
  silently replaced by empty state.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from sky_mini.models import FutureSchemaError, JobRecord, job_from_json
from sky_mini.paths import Paths


def warn(message: str, *args: object) -> None:
    """Log a warning; ``logging`` is imported only when there is something to say (it costs
    ~5 ms on the cron-facing submit path, which normally says nothing)."""
    import logging

    logging.getLogger("sky_mini.state").warning(message, *args)


FILE_MODE = 0o600
LOCK_TIMEOUT_SECONDS = 30.0
_LOCK_POLL_SECONDS = 0.005


class LockTimeout(OSError):
    """A lock could not be taken in time."""


@contextlib.contextmanager
def flocked(path: str, *, timeout: float | None = LOCK_TIMEOUT_SECONDS) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600) for the ``with`` body.

    ``timeout=None`` blocks; ``0`` tries once and raises :class:`LockTimeout` if held.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        acquire_flock(fd, path, timeout)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def acquire_flock(fd: int, path: str, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(errno.EAGAIN, "lock is held by another process", path) from None
            time.sleep(_LOCK_POLL_SECONDS)


def is_locked(path: str) -> bool:
    """True when some process holds an flock on ``path`` (without taking it for long)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: str, payload: bytes, *, durable: bool) -> str:
    """Write ``payload`` to a temp file beside ``path`` (fsynced if ``durable``); its name.

    On any failure the temp file is removed and the error raised."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, FILE_MODE)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def atomic_write_bytes(
    path: str,
    payload: bytes,
    *,
    durable: bool = True,
    on_visible: Callable[[], object] | None = None,
) -> None:
    """Replace ``path`` with ``payload`` atomically (readers see old or new, never half).

    ``on_visible`` runs once the new file can be read, before the directory's fsync: a new
    job's record wakes the server while its submitter still makes the record durable."""
    tmp = _write_temp(path, payload, durable=durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if on_visible is not None:
        on_visible()
    if durable:
        fsync_dir(os.path.dirname(path))


def atomic_write_json(
    path: str, data: Any, *, durable: bool = True, on_visible: Callable[[], object] | None = None
) -> None:
    atomic_write_bytes(path, json_bytes(data), durable=durable, on_visible=on_visible)


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode()


def atomic_write_many(files: list[tuple[str, bytes]]) -> None:
    """Replace several files durably with one pass of fsyncs: every temp file is written and
    fsynced, then all are renamed, then each directory is fsynced once (not once per file).

    A crash leaves each file old or new, never half; once this returns all are durable.
    """
    written: list[tuple[str, str]] = []
    try:
        for path, payload in files:
            written.append((_write_temp(path, payload, durable=True), path))
        while written:
            tmp, path = written[0]
            os.replace(tmp, path)
            written.pop(0)
    except BaseException:
        for tmp, _ in written:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for directory in sorted({os.path.dirname(path) for path, _ in files}):
        fsync_dir(directory)


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None if it does not exist. Never follows a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "refusing to follow a symbolic link", path) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def quarantine(path: str, why: str) -> str | None:
    """Move an unreadable file aside and warn; return where it went."""
    target = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        os.replace(path, target)
    except OSError as exc:
        warn("cannot read %s (%s) and cannot move it aside: %s", path, why, exc)
        return None
    warn("cannot read %s (%s); moved it to %s and kept going", path, why, target)
    return target


def read_json(path: str, *, quarantine_bad: bool = True) -> Any | None:
    """Parse a JSON file; None if missing. A corrupt file is quarantined (if asked) → None.

    A symbolic link planted in its place counts as corrupt: it is never followed.
    """
    try:
        payload = read_bytes(path)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        if quarantine_bad:
            quarantine(path, "a symbolic link, not a sky-mini file")
        return None
    if payload is None:
        return None
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        if quarantine_bad:
            quarantine(path, f"not valid JSON: {exc}")
        return None


class Store:
    """Job records, the ID counter, the active index and client intents under one home."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    # -- job IDs and records --------------------------------------------------------

    def create_job(
        self, build: Callable[[int], JobRecord], on_visible: Callable[[], object] | None = None
    ) -> JobRecord:
        """Allocate the next ID and durably write the record ``build(id)`` under the ID lock.

        The record is written before the counter moves, so a crash between the two leaves a
        record the next allocation steps over: IDs stay dense and are never reused.
        """
        with flocked(self.paths.id_lock):
            return self._create_locked(build, on_visible)

    def create_unique_job(
        self,
        name: str,
        build: Callable[[int], JobRecord],
        *,
        check_under_lock: bool = True,
        on_visible: Callable[[], object] | None = None,
    ) -> tuple[JobRecord, bool]:
        """``--unique``: (the unfinished job named ``name``, True) if there is one, else
        (a new record, False). Check and create happen under the ID lock, so concurrent
        callers with one name create exactly one job. Reads only unfinished records: the
        server's active index plus the IDs it has not seen yet, not the whole history.

        ``check_under_lock=False`` is the test-only negative control (``SKY_MINI_DISABLE=
        unique_lock``): the check moves before the lock and the race comes back.
        """
        early = None if check_under_lock else self.find_unfinished(name)
        with flocked(self.paths.id_lock):
            existing = self.find_unfinished(name) if check_under_lock else early
            if existing is not None:
                return existing, True
            return self._create_locked(build, on_visible), False

    def find_unfinished(self, name: str) -> JobRecord | None:
        active, seen_through = self.read_active()
        if not os.path.exists(self.paths.active_index):
            seen_through = 0  # no server has indexed this home yet: look at every record
        for job_id in sorted(set(active) | set(range(seen_through + 1, self.next_id()))):
            record = self.load_job(job_id)
            if record is not None and record.name == name and not record.status.is_terminal:
                return record
        return None

    def _create_locked(
        self, build: Callable[[int], JobRecord], on_visible: Callable[[], object] | None = None
    ) -> JobRecord:
        """Allocate and write under the ID lock, which the caller holds (``on_visible``: see
        :func:`atomic_write_bytes`; the server finds a record past the counter, next_id)."""
        job_id = max(self._read_next_id(), self._seen_through() + 1)
        # A record or log already there means the ID was given out (the counter may be
        # behind after a crash, or damaged): step over it, never reuse it.
        while os.path.lexists(self.paths.job_record(job_id)) or os.path.lexists(
            self.paths.job_log(job_id)
        ):
            job_id += 1
        record = build(job_id)
        atomic_write_json(self.paths.job_record(job_id), record.to_json(), on_visible=on_visible)
        # Not fsynced: if the counter is lost in a crash, next_id() and the loop above
        # step over the durable record, so the ID is still never reused.
        atomic_write_bytes(self.paths.next_id, f"{job_id + 1}\n".encode(), durable=False)
        return record

    def _read_next_id(self) -> int:
        raw = read_bytes(self.paths.next_id)
        if raw is None:
            return 1
        try:
            value = int(raw.decode().strip())
        except ValueError:
            # Never restart from 1: IDs must not be reused. Recover from the records.
            quarantine(self.paths.next_id, "not an integer")
            return self.highest_recorded_id() + 1
        return max(1, value)

    def _seen_through(self) -> int:
        """The highest ID the server has seen (0 if unknown); read-only, never quarantines."""
        data = read_json(self.paths.active_index, quarantine_bad=False)
        seen = data.get("seen_through", 0) if isinstance(data, dict) else 0
        return seen if isinstance(seen, int) else 0

    def next_id(self) -> int:
        """The ID the next submission will get (read without the lock).

        Steps over records already written past the counter: a CLI killed between writing
        its record and moving the counter leaves one, and it must still run.
        """
        raw = read_bytes(self.paths.next_id)
        try:
            value = max(1, int(raw.decode().strip())) if raw else 1
        except ValueError:
            value = self.highest_recorded_id() + 1
        while os.path.lexists(self.paths.job_record(value)):
            value += 1
        return value

    def highest_recorded_id(self) -> int:
        highest = 0
        for name in os.listdir(self.paths.jobs_dir):
            stem, _, ext = name.partition(".")
            if ext.startswith("json") and stem.isdigit():
                highest = max(highest, int(stem))
        return highest

    def load_job(self, job_id: int) -> JobRecord | None:
        path = self.paths.job_record(job_id)
        data = read_json(path)
        if data is None:
            return None
        try:
            return job_from_json(data)
        except FutureSchemaError as exc:
            warn("skipping %s: %s; upgrade sky-mini to read it", path, exc)
            return None
        except ValueError as exc:
            quarantine(path, str(exc))
            return None

    def save_job(self, record: JobRecord, *, durable: bool = True) -> None:
        atomic_write_json(self.paths.job_record(record.id), record.to_json(), durable=durable)

    def save_jobs(self, records: list[JobRecord]) -> None:
        """Write several records durably with one directory fsync (``atomic_write_many``)."""
        atomic_write_many([(self.paths.job_record(r.id), json_bytes(r.to_json())) for r in records])

    def delete_job(self, job_id: int) -> None:
        log = self.paths.job_log(job_id)
        # The Slurm batch wrapper's records live next to the log.
        for path in (self.paths.job_record(job_id), log, f"{log}.exit.json", f"{log}.started.json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def job_ids_desc(self, below: int) -> Iterator[int]:
        """IDs from ``below - 1`` down to 1 (files may be missing after pruning)."""
        return iter(range(below - 1, 0, -1))

    # -- the active index (written by the server) -----------------------------------

    def read_active(self) -> tuple[list[int], int]:
        """(unfinished job IDs, the highest ID the server had seen) from the active index."""
        data = read_json(self.paths.active_index)
        if not isinstance(data, dict):
            return [], 0
        ids = [i for i in data.get("active", []) if isinstance(i, int)]
        seen = data.get("seen_through", 0)
        return ids, seen if isinstance(seen, int) else 0

    def write_active(self, ids: list[int], seen_through: int) -> None:
        data = {"schema": 1, "active": sorted(ids), "seen_through": seen_through}
        atomic_write_json(self.paths.active_index, data, durable=False)

    # -- intents (written by clients, consumed by the server) -----------------------

    def add_intent(self, kind: str, job_id: int) -> None:
        path = os.path.join(self.paths.intents_dir, f"{kind}-{job_id}")
        atomic_write_bytes(path, f"{time.time()}\n".encode())

    def take_intents(self) -> list[tuple[str, int]]:
        """Every pending intent as (kind, job id), removed from disk as it is taken."""
        taken: list[tuple[str, int]] = []
        try:
            names = os.listdir(self.paths.intents_dir)
        except FileNotFoundError:
            return taken
        for name in sorted(names):
            kind, _, raw_id = name.partition("-")
            path = os.path.join(self.paths.intents_dir, name)
            if name.startswith(".") or not raw_id.isdigit():
                if not name.startswith("."):
                    quarantine(path, "not an intent this sky-mini understands")
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                taken.append((kind, int(raw_id)))
        return taken
