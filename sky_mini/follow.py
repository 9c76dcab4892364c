"""Following files cheaply: wait for appends and record changes with inotify, stream, tail.

A leaf module (stdlib only; ``ctypes`` is imported only when inotify is set up), used by the
client's ``jobs logs --follow``, attached ``jobs launch`` and ``jobs wait``. Followers read
the files the executors and the server write; they never contact the server, so a hundred of
them put no load on it.

Waiting uses Linux inotify through ``ctypes`` on libc's ``inotify_init1`` and
``inotify_add_watch`` (no extra dependency): a log file is watched for ``IN_MODIFY``; a
directory for ``IN_CREATE``/``IN_MOVED_TO``/``IN_CLOSE_WRITE`` of the names we care about
(job records are replaced atomically by rename, so a record change arrives as
``IN_MOVED_TO`` of ``<id>.json``). Where inotify is unavailable (not Linux, out of inotify
instances, ``SKY_MINI_DISABLE=inotify``), :class:`PollWatcher` sleeps a short interval
instead. Either way, callers re-check the files after every wake-up, so a missed or spurious
event costs at most one :data:`SAFETY_WAKE_SECONDS` of latency, never correctness.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

POLL_SECONDS = 0.1
"""The fallback's wait between looks at the files."""

BATCH_SECONDS = 0.02
"""After copying output, let more pile up this long before the next copy: a job printing
10,000 lines a second wakes each follower at most ~50 times a second, not 10,000."""

SAFETY_WAKE_SECONDS = 2.0
"""With inotify, look at the files at least this often anyway (e.g. on NFS, which sends no
events for other machines' writes)."""

TAIL_BLOCK_BYTES = 65536
COPY_CHUNK_BYTES = 65536
DISABLE_ENV = "SKY_MINI_DISABLE"
DISABLE_TOKEN = "inotify"

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

DIR_EVENTS = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE
FILE_EVENTS = IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_BYTES = 64 * 1024


class PollWatcher:
    """The fallback: ``wait`` sleeps a short interval and reports "maybe changed".

    Has the same interface as :class:`InotifyWatcher`, so callers need not care which they got.
    """

    mechanism = "poll"

    def __init__(self, poll_seconds: float = POLL_SECONDS) -> None:
        self.poll_seconds = poll_seconds

    def watch_dir(self, path: str, names: Iterable[str], mask: int = DIR_EVENTS) -> None:
        """Wake up when one of ``names`` in directory ``path`` is created or replaced."""

    def watch_file(self, path: str, mask: int = FILE_EVENTS) -> None:
        """Wake up when the file at ``path`` is appended to (or removed, or replaced)."""

    def wait(self, timeout: float | None) -> bool:
        """Block up to ``timeout`` seconds (None: no limit) for a relevant change.

        True means "something relevant happened", False "timed out"; either way the caller
        looks at the files again. The fallback always sleeps one poll interval and says True.
        """
        delay = self.poll_seconds if timeout is None else max(0.0, min(timeout, self.poll_seconds))
        time.sleep(delay)
        return True

    def close(self) -> None:
        """Release the watcher's resources (idempotent)."""

    def __enter__(self) -> PollWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InotifyWatcher(PollWatcher):
    """One inotify instance (one file descriptor) with watches on files and directories.

    Events for directory entries are filtered by name in this process, so a follower of job 7
    is not woken by job 8's records. A watch that cannot be added (e.g. ``max_user_watches``
    reached) makes :meth:`wait` fall back to the poll interval instead of failing.
    """

    mechanism = "inotify"

    def __init__(self, libc: Any, fd: int, poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__(poll_seconds)
        self._libc = libc
        self.fd = fd
        self._dirs: dict[str, tuple[int, set[str]]] = {}  # path -> (mask, names)
        self._wd_names: dict[int, set[str] | None] = {}  # wd -> names of interest (None: all)
        self.degraded = False  # some watch could not be added: cap waits at the poll interval
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    def _add_watch(self, path: str, mask: int) -> int | None:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd >= 0:
            return wd
        err = self._libc_errno()
        if err == errno.ENOENT:
            raise FileNotFoundError(err, os.strerror(err), path)
        self.degraded = True  # ENOSPC (max_user_watches), EACCES, ...: poll instead
        return None

    def _libc_errno(self) -> int:
        import ctypes

        return ctypes.get_errno()

    def watch_dir(self, path: str, names: Iterable[str], mask: int = DIR_EVENTS) -> None:
        old_mask, old_names = self._dirs.get(path, (0, set()))
        wanted = old_names | set(names)
        combined = old_mask | mask
        wd = self._add_watch(path, combined | IN_ONLYDIR)
        if wd is None:
            return
        self._dirs[path] = (combined, wanted)
        self._wd_names[wd] = wanted  # the same directory always gets the same wd

    def watch_file(self, path: str, mask: int = FILE_EVENTS) -> None:
        wd = self._add_watch(path, mask | IN_DONT_FOLLOW)
        if wd is not None:
            self._wd_names[wd] = None

    def wait(self, timeout: float | None) -> bool:
        if self.degraded:
            timeout = self.poll_seconds if timeout is None else min(timeout, self.poll_seconds)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining_ms = None
            if deadline is not None:
                remaining_ms = max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
            if not self._poller.poll(remaining_ms):
                return False
            if self._drain_events():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _drain_events(self) -> bool:
        """Read every queued event; True if any concerns what we watch."""
        relevant = False
        while True:
            try:
                data = os.read(self.fd, _READ_BYTES)
            except BlockingIOError:
                return relevant
            relevant |= self._any_relevant(data)
            if len(data) < _READ_BYTES // 2:
                return relevant  # a short read: the queue is empty (saves a syscall per wake)

    def _any_relevant(self, data: bytes) -> bool:
        relevant = False
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            start = offset + _EVENT_HEADER.size
            name = data[start : start + length].rstrip(b"\0")
            offset = start + length
            if mask & IN_Q_OVERFLOW:
                relevant = True  # events were dropped: look at everything again
                continue
            if mask & IN_IGNORED:
                self._wd_names.pop(wd, None)
                relevant = True  # the watched file went away
                continue
            if wd not in self._wd_names:
                continue
            names = self._wd_names[wd]
            if names is None or os.fsdecode(name) in names:
                relevant = True
        return relevant

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_LIBC: Any = None


def _load_libc() -> Any:
    global _LIBC
    if _LIBC is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        _LIBC = libc
    return _LIBC


def is_disabled(token: str, env: dict[str, str] | None = None) -> bool:
    """True when the test-only ``SKY_MINI_DISABLE`` list names ``token`` (client side)."""
    raw = (os.environ if env is None else env).get(DISABLE_ENV, "")
    return token in {item.strip() for item in raw.split(",")}


def inotify_disabled(env: dict[str, str] | None = None) -> bool:
    """True when ``SKY_MINI_DISABLE`` lists ``inotify`` (forces the poll fallback)."""
    return is_disabled(DISABLE_TOKEN, env)


def open_watcher(*, use_inotify: bool | None = None) -> PollWatcher:
    """An inotify watcher where the kernel gives one, else the poll fallback.

    ``use_inotify=False`` forces the fallback; ``None`` decides from the platform and
    ``SKY_MINI_DISABLE``. Running out of inotify instances (``fs.inotify.max_user_instances``,
    128 by default, one per follower) quietly falls back to polling.
    """
    if use_inotify is None:
        use_inotify = sys.platform.startswith("linux") and not inotify_disabled()
    if not use_inotify:
        return PollWatcher()
    try:
        libc = _load_libc()
        fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    except (OSError, AttributeError):
        return PollWatcher()
    if fd < 0:
        return PollWatcher()  # EMFILE (out of instances), ENOSYS, ...
    return InotifyWatcher(libc, fd)


# -- streaming a growing file ----------------------------------------------------------------


def copy_available(handle: IO[bytes], out: IO[bytes]) -> int:
    """Copy everything readable now from ``handle`` to ``out`` (flushed); return the bytes."""
    total = 0
    while True:
        chunk = handle.read(COPY_CHUNK_BYTES)
        if not chunk:
            break
        out.write(chunk)
        total += len(chunk)
    if total:
        out.flush()
    return total


class FileStream:
    """Copies a growing file to ``out`` from byte ``position``, once the file exists.

    The watcher learns of the file's creation through a watch on its directory (added here)
    and of its appends through a watch on the file, added before the first read so no append
    falls between reading and waiting.
    """

    def __init__(self, path: str, out: IO[bytes], watcher: PollWatcher, position: int = 0) -> None:
        self.path = path
        self.out = out
        self.watcher = watcher
        self.position = position
        self.fd = -1
        directory, name = os.path.split(path)
        try:
            watcher.watch_dir(directory, [name])
        except FileNotFoundError:
            pass  # no directory yet: the caller's safety wake-up still looks again

    def pump(self) -> int:
        """Copy what was appended since the last call; 0 when nothing new (or no file yet)."""
        if self.fd < 0 and not self._open():
            return 0
        total = 0
        while True:
            # Unbuffered reads: a short read means "caught up", saving a syscall per wake-up.
            chunk = os.pread(self.fd, COPY_CHUNK_BYTES, self.position)
            if chunk:
                self.out.write(chunk)
                self.position += len(chunk)
                total += len(chunk)
            if len(chunk) < COPY_CHUNK_BYTES:
                break
        if total:
            self.out.flush()
        return total

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            self.watcher.watch_file(self.path)
        except FileNotFoundError:
            pass  # removed already; what we opened is still readable
        self.fd = fd
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def stream_until(
    stream: FileStream,
    watcher: PollWatcher,
    finished: Callable[[], bool],
    *,
    safety_seconds: float = SAFETY_WAKE_SECONDS,
    batch_seconds: float = BATCH_SECONDS,
) -> None:
    """Stream appends as they arrive until ``finished()``; then copy what is left and return.

    ``finished`` is asked after every batch, so a writer that never stops (a daemon left
    behind by a job) cannot keep a follower of a finished job attached.
    """
    while True:
        copied = stream.pump()
        if finished():
            stream.pump()
            return
        if copied and batch_seconds > 0:
            time.sleep(batch_seconds)
        watcher.wait(safety_seconds)


# -- tail -----------------------------------------------------------------------------------


def read_tail(path: str, count: int, block: int = TAIL_BLOCK_BYTES) -> tuple[list[bytes], int]:
    """The last ``count`` lines of a file and the offset they end at (the file's size then).

    Reads backwards in blocks until it holds ``count`` complete lines, so a 10 GB log costs
    about as much as a 10 KB one. Lines end at ``\\n`` only (a ``\\r`` progress bar is part of
    its line); a last line without ``\\n`` counts as a line. A missing file has no lines.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], 0
    with os.fdopen(fd, "rb") as handle:
        end = os.fstat(fd).st_size
        if count <= 0:
            return [], end
        chunks: list[bytes] = []
        newlines = 0
        position = end
        # count+1 newlines guarantee `count` complete lines after the first (partial) one.
        while position > 0 and newlines <= count:
            step = min(block, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
        data = b"".join(reversed(chunks))
    lines = split_lines(data)
    if position > 0 and lines:
        lines = lines[1:]  # starts mid-line (or at a line we did not need)
    return lines[-count:], end


def split_lines(data: bytes) -> list[bytes]:
    """Split at ``\\n``, keeping the ends; a trailing piece without ``\\n`` is a line too."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines
