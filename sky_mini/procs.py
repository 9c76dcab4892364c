"""Process primitives: prctl, signal hygiene, process-group stops, identity and sweeps.

Platform notes (measured, see PLATFORM.md):
- ``PR_SET_PDEATHSIG`` fires when the parent *thread* exits and is not inherited by
  grandchildren; there is a race between ``fork`` and ``prctl``, closed by re-checking
  ``getppid()`` against the PID recorded before the fork.
- ``PR_SET_CHILD_SUBREAPER`` makes orphaned descendants reparent to us so we can reap and
  kill them.
- PIDs get reused: never signal a PID read from a file without comparing its create time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import sys
from collections.abc import Iterable

log = logging.getLogger("sky_mini.procs")

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MARKER_ENV = "SKY_MINI_MARKER"
CREATE_TIME_TOLERANCE = 0.05

_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg: int) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return int(_libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(sig: int, expected_parent: int) -> bool:
    """Ask the kernel to send ``sig`` when our parent thread dies; exit if it already has.

    Returns False where prctl is unavailable (the caller warns and relies on the pipe).
    """
    ok = _prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != expected_parent:
        # The parent died between fork and prctl: nobody would ever signal us.
        os._exit(1)
    return ok


def set_child_subreaper() -> bool:
    """Become the reaper of orphaned descendants. False where unsupported."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def reset_signals_for_exec() -> None:
    """Give an exec'd child default dispositions and an empty mask (tini does the same)."""
    for sig in (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGCHLD,
        signal.SIGPIPE,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGXFSZ,
    ):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
    with contextlib.suppress(OSError, ValueError):
        signal.set_wakeup_fd(-1)


def set_oom_score_adj(value: int, pid: int | str = "self") -> bool:
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as handle:
            handle.write(str(value))
        return True
    except OSError:
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists. Tolerates EPERM."""
    if pgid <= 1:
        return False  # never signal group 0 (our own) or 1
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False


def signal_pid(pid: int, sig: int) -> bool:
    if pid <= 1:
        return False
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_exists(pgid: int) -> bool:
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def process_create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def is_same_process(pid: int | None, create_time: float | None) -> bool:
    """True when ``pid`` is alive and is the process recorded with ``create_time``.

    PID 1 is a valid answer: a server that is PID 1 of its container's pid namespace is
    alive for every CLI inside that namespace. The create time is what protects against a
    PID that names another process (outside the namespace PID 1 is the machine's init, whose
    create time differs). ``SKY_MINI_DISABLE=pid1`` (test only) restores the old refusal.
    """
    if not pid or pid < 1 or create_time is None:
        return False
    if pid == 1 and _pid1_check_disabled():
        return False
    actual = process_create_time(pid)
    return actual is not None and abs(actual - create_time) < CREATE_TIME_TOLERANCE


def _pid1_check_disabled() -> bool:
    """Test-only negative control: treat PID 1 as never ours (the bug of issue 11)."""
    raw = os.environ.get("SKY_MINI_DISABLE", "")
    return "pid1" in {item.strip() for item in raw.split(",")}


TITLE_PREFIX = "sky-mini: "
DEFAULT_HOME_FOR_TITLE = "~/.sky-mini"
_title_home: str | None = None


def title_for(role: str, home: str | None) -> str:
    """``sky-mini: server``, or ``sky-mini: server [/srv/sky]`` for a non-default home.

    With two homes on one machine, ``ps`` must tell their servers and executors apart.
    """
    title = TITLE_PREFIX + role
    if home and os.path.abspath(home) != os.path.abspath(
        os.path.expanduser(DEFAULT_HOME_FOR_TITLE)
    ):
        title += f" [{home}]"
    return title


TITLE_ROOM_ENV = "SKY_MINI_TITLE_ROOM"
LONGEST_ROLE = "services-controller"


def ensure_title_room(home: str) -> None:
    """Re-exec this process once with a longer command line if its titles would not fit.

    With ``SPT_NOENV`` setproctitle may only use the command line's own bytes, so a title
    longer than ``argv`` is cut (``sky-mini: executor job-0 [/t``). Forked children share
    that room. The re-exec keeps the PID (so PID 1 stays PID 1) and adds an ignored
    ``-X`` option of the missing length; the environment variable stops a second round.
    """
    if os.environ.get(TITLE_ROOM_ENV) or not sys.executable:
        return
    needed = len(title_for(LONGEST_ROLE, home)) + 1
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            room = len(handle.read())
    except OSError:
        return
    if room >= needed:
        return
    os.environ[TITLE_ROOM_ENV] = "1"
    pad = "sky_mini_title=" + "_" * max(1, needed - room)
    argv = [sys.executable, "-X", pad, "-m", "sky_mini", *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError):
        os.execv(sys.executable, argv)
    os.environ.pop(TITLE_ROOM_ENV, None)  # exec failed: run with a shortened title


def title_of(role: str) -> str:
    """The title :func:`set_title` gives ``role`` in this process (for a spawned child)."""
    return title_for(role, _title_home)


def set_title(role: str, home: str | None = None) -> None:
    """Set this process's title (``ps -o args``) for ``role``, naming the home if needed.

    ``home`` is remembered, so a child forked later (an executor) can pass only its role.
    ``SPT_NOENV`` is put in the environment before setproctitle is first imported: without
    it setproctitle overwrites the environment block to make room, and ``/proc/PID/environ``
    then reads as NULs. It is removed again at once, so jobs never inherit it.
    """
    global _title_home
    if home is not None:
        _title_home = home
    os.environ.pop(TITLE_ROOM_ENV, None)  # never handed on to jobs
    had = "SPT_NOENV" in os.environ
    os.environ.setdefault("SPT_NOENV", "1")
    try:
        import setproctitle

        setproctitle.setproctitle(title_for(role, _title_home))
    except Exception:  # noqa: BLE001 - a title is cosmetic; never fail a process for it
        log.debug("cannot set the process title", exc_info=True)
    finally:
        if not had:
            os.environ.pop("SPT_NOENV", None)


def marker_for(instance_id: str, owner: str) -> str:
    return f"{instance_id}:{owner}"


_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, walking only its own subtree.

    Reads ``/proc/<pid>/task/<tid>/children`` (Linux ≥ 3.5): psutil's
    ``children(recursive=True)`` scans every process on the machine instead, which was more
    than half of an executor's busy time. Falls back to psutil without that file.
    """
    if not _PROC_CHILDREN:
        import psutil

        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # it exited meanwhile
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as handle:
                    children = [int(c) for c in handle.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            pending.extend(children)
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of one process from ``/proc/<pid>/statm`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss(pid: int, *, include_self: bool = True) -> int:
    """Summed RSS of ``pid`` (optionally) and all its descendants."""
    members = descendants(pid) + ([pid] if include_self else [])
    return sum(rss_bytes(member) for member in members)


def kill_descendants(pid: int) -> None:
    """SIGKILL every descendant of ``pid`` (for a subreaper: also adopted orphans)."""
    for member in descendants(pid):
        signal_pid(member, signal.SIGKILL)


def read_vmstat_oom_kills() -> int | None:
    """The machine-wide count of OOM kills (``/proc/vmstat`` ``oom_kill``), None if unknown.

    It also counts kills inside memory cgroups: a rise while a job ran is evidence that a
    SIGKILL nobody in sky-mini sent came from the OOM killer.
    """
    try:
        with open("/proc/vmstat", "rb") as handle:
            for line in handle:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def find_marked_processes(prefixes: Iterable[str]) -> list[int]:
    """PIDs whose environment carries a ``SKY_MINI_MARKER`` starting with one of ``prefixes``.

    Reads ``/proc/<pid>/environ`` directly (psutil would build a dict per process).
    """
    wanted = tuple(f"{MARKER_ENV}={p}".encode() for p in prefixes)
    if not wanted:
        return []
    me = os.getpid()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, 1):
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(wanted):
                found.append(int(entry))
                break
    return found


def sweep_marked(prefixes: Iterable[str]) -> list[int]:
    """SIGKILL every process carrying one of the markers; return their PIDs.

    Safe against PID reuse: the marker is read from the process itself just before killing,
    and a process that changed is not one of ours.
    """
    killed: list[int] = []
    for pid in find_marked_processes(prefixes):
        if signal_pid(pid, signal.SIGKILL):
            killed.append(pid)
    return killed


def reap_any() -> list[tuple[int, int]]:
    """Reap every exited child without blocking: [(pid, raw wait status)]."""
    return [(pid, status) for pid, status, _ in reap_any_with_rusage()]


def reap_any_with_rusage() -> list[tuple[int, int, int]]:
    """Reap every exited child without blocking: [(pid, raw wait status, peak RSS bytes)].

    ``ru_maxrss`` is the kernel's high-water mark of the reaped process (and of the children
    it reaped itself): the honest peak, where sampling only sees what it happened to catch.
    """
    reaped: list[tuple[int, int, int]] = []
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status, int(usage.ru_maxrss) * 1024))


def reap_pids(pids: Iterable[int]) -> list[tuple[int, int]]:
    """Reap only the given children (leaves every other zombie alone)."""
    reaped: list[tuple[int, int]] = []
    for pid in pids:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append((done, status))
    return reaped


def returncode_from_status(status: int) -> int:
    """``subprocess``-style returncode: negative signal number for a death by signal."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return -1


def status_from_returncode(returncode: int) -> int:
    """The raw wait status for a ``subprocess``-style returncode (inverse of the above)."""
    return -returncode if returncode < 0 else (returncode & 0xFF) << 8


def open_fds() -> list[int]:
    """This process's open descriptors (``/proc/self/fd``, without the listing's own)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(1024)]
    found = []
    for name in names:
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # the directory listing's own descriptor, closed by now
        found.append(fd)
    return found


def close_fds(fds: Iterable[int]) -> None:
    """Close each of ``fds`` that is open."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def close_fds_except(keep: Iterable[int]) -> None:
    """Close every descriptor but ``keep`` (a forked child must not hold the server's fds)."""
    keep_sorted = sorted(set(keep))
    low = 0
    for fd in keep_sorted:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)
