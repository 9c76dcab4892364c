"""The Slurm backend's own thread: every ``sbatch``/``squeue``/``scancel``/``sinfo`` runs
here, so an unreachable controller (each call then takes 9-18 s on 22.05 before it fails)
never delays the server's tick loop and its local jobs.

The loop hands work over (:meth:`Worker.kick` after queueing a command) and gets events
back through the backend's outbox; a byte on the backend's pipe (in the loop's selector)
wakes it. The thread lives as long as the server: it never forks a tied child
(``PR_SET_PDEATHSIG`` fires when the forking *thread* exits, see PLATFORM.md), only short
tool processes it waits for itself. Log lines from the thread are handed to the loop
(:class:`DeferredLog`), so the thread never writes the log while the loop forks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

IDLE_WAIT_SECONDS = 1.0
MIN_WAIT_SECONDS = 0.05
FAILED_STEP_WAIT_SECONDS = 5.0


class DeferredLog:
    """A logger facade: lines logged from the main thread go out at once; from another
    thread they wait for :meth:`flush` (called by the loop)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.lock = threading.Lock()
        self.lines: list[tuple[int, str, tuple[Any, ...]]] = []

    def log(self, level: int, msg: str, *args: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self.logger.log(level, msg, *args)
            return
        with self.lock:
            self.lines.append((level, msg, args))

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def flush(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
        for level, msg, args in lines:
            self.logger.log(level, msg, *args)


class Worker:
    """Runs ``step`` (one round of Slurm I/O; returns seconds until more is due) whenever
    kicked, else at least every ``IDLE_WAIT_SECONDS``."""

    def __init__(self, step: Callable[[], float], log: DeferredLog) -> None:
        self.step = step
        self.log = log
        self.cond = threading.Condition()
        self.kicked = False
        self.thread: threading.Thread | None = None
        self.steps = 0

    @property
    def started(self) -> bool:
        return self.thread is not None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="sky-mini-slurm", daemon=True)
        self.thread.start()

    def kick(self) -> None:
        with self.cond:
            self.kicked = True
            self.cond.notify()

    def run(self) -> None:
        wait = 0.0
        while True:
            with self.cond:
                if not self.kicked and wait > 0:
                    self.cond.wait(timeout=wait)
                self.kicked = False
            try:
                wait = min(IDLE_WAIT_SECONDS, max(MIN_WAIT_SECONDS, self.step()))
            except Exception as exc:  # never let the thread die: the loop would wait forever
                self.log.warning("Slurm worker step failed (%r); retrying in %gs", exc, 5.0)
                wait = FAILED_STEP_WAIT_SECONDS
            self.steps += 1
