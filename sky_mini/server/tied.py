"""Children tied to the server: the job executors and the services controller.

A tied child is a ``multiprocessing`` process of the ``fork`` context, started from the
server's main thread (``PR_SET_PDEATHSIG`` fires when the forking *thread* exits). Two ties
make it die with the server: the parent-death signal (SIGTERM), and multiprocessing's parent
sentinel (:func:`parent_sentinel`), a pipe end that turns readable (EOF) the moment the server
is gone, which the child's selector loop watches next to its command pipe. On the server's
side, ``Process.sentinel`` turns readable the moment the child exits (see
:func:`child_sentinels`), and :func:`reap_tied` lets each ``Process`` reap its own child, so
its ``exitcode`` is right (a child reaped by a bare ``waitpid`` leaves it at None forever).

Right after the fork the child asks for SIGTERM on its parent's death, re-checks
``getppid()`` (closing the fork/prctl race), becomes a child subreaper so its own children's
orphans reparent to it, and closes every descriptor it inherited but its own: its command
and event pipes and the two sentinel pipes multiprocessing made for it. No child holds the
server's lock, the wake FIFO, or another child's pipes (in the fork context each later child
would otherwise inherit the server's ends of every earlier child's pipes and sentinels).
The messages themselves are JSON lines over plain pipes (:mod:`~sky_mini.server.channel`):
non-blocking reads that fit one selector loop, and one line per event is easy to log.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, NoReturn

from sky_mini import procs

ChildMain = Callable[[int, int], int]
"""Runs in the child with (command read fd, event write fd); returns its exit code."""

_FORK = multiprocessing.get_context("fork")


@dataclass
class TiedChild:
    """The server's handle on one tied child."""

    process: BaseProcess
    pid: int
    cmd_w: int
    evt_r: int
    sentinel: int
    returncode: int | None = None
    """Set once reaped: ``subprocess``-style (negative signal number for a signal)."""


_children: dict[int, TiedChild] = {}
"""Tied children not yet reaped, by PID (the server's own bookkeeping)."""


def start_tied(role: str, disabled: frozenset[str], main: ChildMain) -> TiedChild:
    """Start a tied child titled for ``role`` (``executor job-0``; see ``procs.set_title``)
    from the main thread; return its handle."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("tied children are started from the main thread only (PDEATHSIG)")
    server_pid = os.getpid()
    cmd_r, cmd_w = os.pipe()
    evt_r, evt_w = os.pipe()
    # What the child inherits and must close: everything open now but its two pipe ends.
    # The sentinel pipes multiprocessing creates next are not in this set, so they stay.
    inherited = frozenset(procs.open_fds()) - {0, 1, 2, cmd_r, evt_w}
    process = _FORK.Process(
        target=run_tied_child,
        args=(role, server_pid, disabled, cmd_r, evt_w, main, inherited),
        name=role,
        daemon=True,  # at interpreter exit multiprocessing terminates (SIGTERM) and joins it
    )
    try:
        process.start()
    finally:
        os.close(cmd_r)
        os.close(evt_w)
    os.set_blocking(cmd_w, True)
    assert process.pid is not None
    child = TiedChild(process, process.pid, cmd_w, evt_r, process.sentinel)
    _children[child.pid] = child
    return child


def fork_tied(role: str, disabled: frozenset[str], main: ChildMain) -> tuple[int, int, int]:
    """Start a tied child titled for ``role``; return (pid, command write fd, event read fd).

    The same as :func:`start_tied` for callers that only need the descriptors; the server's
    :func:`reap_tied` still reaps it through its ``Process``.
    """
    child = start_tied(role, disabled, main)
    return child.pid, child.cmd_w, child.evt_r


def run_tied_child(
    role: str,
    server_pid: int,
    disabled: frozenset[str],
    cmd_fd: int,
    evt_fd: int,
    main: ChildMain,
    inherited: frozenset[int],
) -> NoReturn:
    """The child's side of :func:`start_tied`. Never returns into the server's code."""
    code = 1
    _children.clear()  # the server's handles on earlier children mean nothing here
    try:
        if "pdeathsig" not in disabled:
            procs.set_parent_death_signal(signal.SIGTERM, server_pid)
        elif os.getppid() != server_pid:
            os._exit(1)
        if "subreaper" not in disabled:
            procs.set_child_subreaper()
        if "fds" not in disabled:  # test-only negative control: keep what was inherited
            procs.close_fds(inherited)
        sentinel = parent_sentinel()
        if sentinel is not None:
            os.set_blocking(sentinel, False)
        procs.set_title(role)
        code = main(cmd_fd, evt_fd)
    except BaseException:  # noqa: BLE001 - report, then exit without unwinding into the server
        import traceback

        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def parent_sentinel() -> int | None:
    """In a tied child: the descriptor that turns readable (EOF) when the server is gone."""
    parent = multiprocessing.parent_process()
    return None if parent is None else parent.sentinel


def parent_gone() -> bool:
    """In a tied child: has the server gone? (its sentinel reads EOF; nothing else arrives)"""
    sentinel = parent_sentinel()
    if sentinel is None:
        return False
    try:
        return os.read(sentinel, 1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def child_sentinels() -> list[int]:
    """In the server: one descriptor per live tied child, readable once that child exited."""
    return [c.sentinel for c in _children.values() if c.returncode is None]


def tied_child(pid: int) -> TiedChild | None:
    return _children.get(pid)


def reap_tied(pid: int) -> int | None:
    """Let the ``Process`` of tied child ``pid`` reap it; return its returncode (None: alive).

    Its descriptors (sentinel included) are closed here: call :func:`child_sentinels` again
    before the next ``select``.
    """
    child = _children.get(pid)
    if child is None:
        return None
    returncode = child.process.exitcode  # Popen.poll: waitpid(pid, WNOHANG) on its own
    if returncode is None:
        return None
    child.returncode = returncode
    del _children[pid]
    with contextlib.suppress(ValueError):
        child.process.close()
    return child.returncode


def reaped_elsewhere() -> list[int]:
    """Tied children whose ``Process`` already reaped them (``start`` polls every child)."""
    return [pid for pid, c in _children.items() if c.process.exitcode is not None]


# Children a server thread (the Slurm tools worker) started with subprocess and waits for
# itself: the loop must leave them to it, or subprocess would see ECHILD and report exit 0.
# The thread holds THREAD_CHILDREN_LOCK from before the fork until the PID is added.
THREAD_CHILDREN_LOCK = threading.Lock()
_thread_children: set[int] = set()


def own_thread_child(pid: int) -> None:
    """Under ``THREAD_CHILDREN_LOCK``: ``pid`` is reaped by the thread that started it."""
    _thread_children.add(pid)


def release_thread_child(pid: int) -> None:
    with THREAD_CHILDREN_LOCK:
        _thread_children.discard(pid)


def _forget_thread_children() -> None:
    """In a forked child: a fresh lock (the worker may have held it at the fork), no PIDs."""
    global THREAD_CHILDREN_LOCK
    THREAD_CHILDREN_LOCK = threading.Lock()
    _thread_children.clear()


os.register_at_fork(after_in_child=_forget_thread_children)


def is_thread_child(pid: int) -> bool:
    with THREAD_CHILDREN_LOCK:
        return pid in _thread_children


def reap_children(forget: Callable[[int], None], *, orphans: bool = True) -> list[tuple[int, int]]:
    """Reap every exited child without blocking: [(pid, raw wait status)].

    ``os.waitid(P_ALL, WNOWAIT)`` looks at the next exited child without reaping it; a tied
    child is then reaped by its own ``Process`` (so its ``exitcode`` is right), any other
    (an orphan adopted as PID 1 or subreaper) by ``waitpid``. ``forget(fd)`` is called with a
    tied child's sentinel just before it is closed, so a selector can drop it. With
    ``orphans=False`` (a test-only negative control) only tied children are reaped.
    """
    reaped: list[tuple[int, int]] = []

    def reap_own(pid: int) -> bool:
        child = _children[pid]
        forget(child.sentinel)
        returncode = reap_tied(pid)
        if returncode is None:
            return False
        reaped.append((pid, procs.status_from_returncode(returncode)))
        return True

    for pid in reaped_elsewhere():
        reap_own(pid)
    if not orphans:
        for pid in list(_children):
            reap_own(pid)
        return reaped
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if info is None or info.si_pid == 0:
            break
        pid = info.si_pid
        if pid in _children:
            if not reap_own(pid):
                break  # cannot happen (it is waitable); never spin on it
            continue
        if is_thread_child(pid):
            break  # its thread reaps it within moments; the rest wait for the next tick
        reaped += procs.reap_pids([pid])
    return reaped


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
