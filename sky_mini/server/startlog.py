"""The start log (``server/starts.log``): the jobs this server has handed to an executor.

A job's record must never read PENDING to a server that starts after this one died while
the job may have run: that server would run it a second time. Writing the record as
STARTING at each dispatch cost a rename per job (~0.8 ms here: ext4 flushes the new file
when a rename replaces an old one). Instead each dispatch appends a line ``ID ATTEMPT``
here *before* the executor is sent the job, and the record is written once the job has run
a moment (RUNNING) or when it ends (``publish``).

A server that starts reads the log of the one before (:meth:`StartLog.read_started`)
before it adopts PENDING records: a PENDING record whose ID and attempt are in it was
started, and is reconciled like a RUNNING one (``restart``: ``supervisor_lost``, or its
next retry). Then the log is emptied. Like the STARTING record it replaces, the log is not
fsynced: a power cut takes its tail, and the jobs' processes with it. It is emptied again
whenever it is over ``START_LOG_MAX_BYTES`` and no local job is unfinished.
"""

from __future__ import annotations

import contextlib
import os

from sky_mini.state import FILE_MODE

START_LOG_MAX_BYTES = 1 << 20


class StartLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.size = 0

    def read_started(self) -> set[tuple[int, int]]:
        """(job ID, attempt) of every start in the log; a torn last line is skipped."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return set()
        started: set[tuple[int, int]] = set()
        for line in data.split(b"\n"):
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                started.add((int(parts[0]), int(parts[1])))
        return started

    def empty(self) -> None:
        """Start a new log (after the previous server's starts are reconciled). Where it
        cannot be opened, :meth:`note` tries again and the records say STARTING instead."""
        self.close()
        with contextlib.suppress(OSError):
            self.fd = self._open(os.O_TRUNC)
            self.size = 0

    def note(self, job_id: int, attempt: int) -> bool:
        """Append a start; False where it could not be written (the caller writes the
        record as STARTING instead). Opens the log on first use without emptying it."""
        line = f"{job_id} {attempt}\n".encode()
        try:
            if self.fd < 0:
                self.fd = self._open(0)
                self.size = os.fstat(self.fd).st_size
                if self.size and os.pread(self.fd, 1, self.size - 1) != b"\n":
                    self.size += os.write(self.fd, b"\n")  # end a torn line: never glue to it
            if os.write(self.fd, line) != len(line):
                return False
        except OSError:
            return False
        self.size += len(line)
        return True

    def _open(self, extra_flags: int) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | extra_flags
        return os.open(self.path, flags, FILE_MODE)

    def trim(self, unfinished_local: bool) -> None:
        """Empty a long log once no local job it could name is unfinished."""
        if self.size > START_LOG_MAX_BYTES and not unfinished_local and self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
                self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
