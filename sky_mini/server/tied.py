"""Children tied to the server: the job executors and the services controller.

A tied child is forked from the server's main thread (``PR_SET_PDEATHSIG`` fires when the
forking *thread* exits) with two pipes: commands in, whose write end only the server holds,
so EOF means "server gone"; and events out. Right after ``fork`` it asks for SIGTERM on its
parent's death, re-checks ``getppid()`` (closing the fork/prctl race), becomes a child
subreaper so its own children's orphans reparent to it, and closes every descriptor it
inherited but its two pipes: no other process may hold the server's lock, wake FIFO or
another child's pipe.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any, NoReturn

from sky_mini import procs

ChildMain = Callable[[int, int], int]
"""Runs in the child with (command read fd, event write fd); returns its exit code."""


def fork_tied(role: str, disabled: frozenset[str], main: ChildMain) -> tuple[int, int, int]:
    """Fork a tied child titled for ``role`` (``executor job-0``; see ``procs.set_title``);
    return (pid, command write fd, event read fd)."""
    server_pid = os.getpid()
    cmd_r, cmd_w = os.pipe()
    evt_r, evt_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        run_tied_child(role, server_pid, disabled, cmd_r, evt_w, main)
    os.close(cmd_r)
    os.close(evt_w)
    os.set_blocking(cmd_w, True)
    return pid, cmd_w, evt_r


def run_tied_child(
    role: str,
    server_pid: int,
    disabled: frozenset[str],
    cmd_fd: int,
    evt_fd: int,
    main: ChildMain,
) -> NoReturn:
    """The child's side of :func:`fork_tied`. Never returns into the server's code."""
    code = 1
    try:
        if "pdeathsig" not in disabled:
            procs.set_parent_death_signal(signal.SIGTERM, server_pid)
        elif os.getppid() != server_pid:
            os._exit(1)
        if "subreaper" not in disabled:
            procs.set_child_subreaper()
        procs.close_fds_except((0, 1, 2, cmd_fd, evt_fd))
        procs.set_title(role)
        code = main(cmd_fd, evt_fd)
    except BaseException:  # noqa: BLE001 - report, then exit without unwinding into the server
        import traceback

        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


class LoopSignals:
    """The signal side of a tied child's selector loop: a wake-up pipe and a SIGTERM flag.

    Handlers only record or wake (``signal.set_wakeup_fd`` writes to the pipe, so ``select``
    returns). SIGTERM, also the parent-death signal, sets ``term_received``; SIGCHLD only
    wakes the loop. SIGINT and SIGHUP are ignored: Ctrl-C in a foreground server's terminal
    reaches every process of its group, and the server decides how to shut down.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.term_received = False

    def install(self) -> None:
        signal.set_wakeup_fd(self.write_fd)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _on_term(self, _signum: int, _frame: Any) -> None:
        self.term_received = True

    def drain(self) -> None:
        """Empty the wake-up pipe (call after every ``select``)."""
        with contextlib.suppress(OSError):
            while os.read(self.read_fd, 4096):
                pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
