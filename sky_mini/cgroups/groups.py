"""Per-job groups: create (with a memory limit), join, read, kill and remove one job's groups."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from collections.abc import Iterator, Sequence

from sky_mini.cgroups.detect import CgroupCapabilities
from sky_mini.cgroups.files import (
    _check_name,
    _child_dirs,
    _read_keyed,
    _read_pids,
    _wait_for,
    _write_file,
)
from sky_mini.cgroups.oom import read_memory_bytes, read_oom_kill_count

log = logging.getLogger("sky_mini.cgroups")

REMOVE_TIMEOUT_SECONDS = 2.0
"""How long :meth:`JobCgroup.remove` waits for a killed group to empty before giving up."""

KILL_PASSES = 20
"""How many SIGKILL passes the v1-only kill makes over ``cgroup.procs`` (a forking job)."""

KILL_PASS_WAIT_SECONDS = 0.1
"""How long each v1 kill pass waits for the signalled members to leave the group."""


class JobCgroup:
    """One job's groups: a v1 memory group (if available) and a v2 group (if available).

    Both are named ``<base>/<group_name>`` below the own cgroup dirs in the capabilities.
    Reading methods return None when a value is unknown; nothing here raises for a cgroup
    problem.
    """

    def __init__(
        self,
        *,
        v1_dir: str | None,
        v2_dir: str | None,
        memory_limit_bytes: int | None,
        memory_limited: bool,
        oom_kill_baseline: int | None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.v1_dir = v1_dir
        self.v2_dir = v2_dir
        self.memory_limit_bytes = memory_limit_bytes
        self.memory_limited = memory_limited
        """True if the kernel enforces ``memory_limit_bytes`` for this group."""
        self.oom_kill_baseline = oom_kill_baseline
        self.warnings = warnings
        """What could not be set up (already logged); the caller degrades accordingly."""

    @classmethod
    def create(
        cls,
        caps: CgroupCapabilities,
        base_name: str,
        group_name: str,
        memory_limit_bytes: int | None,
    ) -> JobCgroup:
        """Make (or replace a stale) ``<base_name>/<group_name>`` in each usable hierarchy.

        Sets the memory limit (v1 ``memory.limit_in_bytes`` plus ``memory.swappiness=0``; v2
        ``memory.max`` when the v2 memory controller is delegated) and records the
        ``oom_kill`` baseline. Raises ValueError only for a malformed name.
        """
        _check_name(base_name, must_have_prefix=True)
        _check_name(group_name, must_have_prefix=False)
        warnings: list[str] = []
        v1_dir: str | None = None
        v2_dir: str | None = None
        limited = False

        if caps.v1_memory_root is not None:
            v1_dir = _make_group(caps.v1_memory_root, base_name, group_name, warnings)
        if caps.v2_root is not None:
            v2_dir = _make_group(caps.v2_root, base_name, group_name, warnings)
            if v2_dir is not None and caps.v2_memory and memory_limit_bytes is not None:
                # Children get memory.max only once the base delegates the controller.
                _write_file(
                    os.path.join(caps.v2_root, base_name, "cgroup.subtree_control"), "+memory"
                )

        if memory_limit_bytes is not None:
            limit = str(int(memory_limit_bytes))
            if v1_dir is not None:
                if _write_file(os.path.join(v1_dir, "memory.limit_in_bytes"), limit):
                    limited = True
                    _write_file(os.path.join(v1_dir, "memory.swappiness"), "0")
                else:
                    warnings.append(f"cannot set memory.limit_in_bytes in {v1_dir}")
            if v2_dir is not None and caps.v2_memory:
                if _write_file(os.path.join(v2_dir, "memory.max"), limit):
                    limited = True
                    _write_file(os.path.join(v2_dir, "memory.swap.max"), "0")
                else:
                    warnings.append(f"cannot set memory.max in {v2_dir}")
            if not limited:
                warnings.append(
                    f"memory limit for {group_name} not enforced by a cgroup: "
                    "falling back to the RSS watchdog"
                )
        for line in warnings:
            log.warning("%s", line)

        group = cls(
            v1_dir=v1_dir,
            v2_dir=v2_dir,
            memory_limit_bytes=memory_limit_bytes,
            memory_limited=limited,
            oom_kill_baseline=None,
            warnings=tuple(warnings),
        )
        group.oom_kill_baseline = group.oom_kill_count()
        return group

    @property
    def paths(self) -> tuple[str, ...]:
        """The group dirs, for recording in state (and for :func:`sweep_base` later)."""
        return tuple(d for d in (self.v1_dir, self.v2_dir) if d is not None)

    def procs_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files the job child writes its own pid into before exec."""
        return tuple(os.path.join(d, "cgroup.procs") for d in self.paths)

    def oom_kill_count(self) -> int | None:
        """Processes OOM-killed in this group (any cause: own limit, ancestor's, host's)."""
        return read_oom_kill_count(self.v1_dir, self.v2_dir)

    def oom_kills_since_start(self) -> int | None:
        count = self.oom_kill_count()
        if count is None:
            return None
        return max(0, count - (self.oom_kill_baseline or 0))

    def peak_memory_bytes(self) -> int | None:
        return read_memory_bytes(
            self.v1_dir, self.v2_dir, "memory.max_usage_in_bytes", "memory.peak"
        )

    def current_memory_bytes(self) -> int | None:
        return read_memory_bytes(
            self.v1_dir, self.v2_dir, "memory.usage_in_bytes", "memory.current"
        )

    def pids(self) -> set[int]:
        """Every process in any of the groups (or in groups the job made below them)."""
        found: set[int] = set()
        for directory in self.paths:
            found |= _tree_pids(directory)
        return found

    def kill(self) -> None:
        """SIGKILL every process in the groups; never raises.

        v2 ``cgroup.kill`` kills the whole tree atomically, forks included. Without it the
        members of the v1 group are signalled pass by pass until the group is empty (bounded
        by ``KILL_PASSES``). Does not wait for the processes to be gone.
        """
        for directory in self.paths:
            _kill_tree(directory)

    def is_empty(self) -> bool:
        return all(_tree_is_empty(d) for d in self.paths)

    def wait_for_empty(self, timeout: float = REMOVE_TIMEOUT_SECONDS) -> bool:
        return _wait_for(self.is_empty, timeout)

    def remove(self) -> None:
        """Kill, wait (at most ``REMOVE_TIMEOUT_SECONDS``) until empty, rmdir; never raises."""
        for directory in self.paths:
            _remove_tree(directory, keep_top=False)

    def __repr__(self) -> str:
        return f"JobCgroup(paths={self.paths!r}, memory_limit_bytes={self.memory_limit_bytes!r})"


def join_cgroup_files(procs_files: Sequence[str]) -> None:
    """Move the calling process into each group; for a forked child before exec.

    Uses only ``os.open``/``os.write``; every error is ignored (the parent already warned
    when it could not set the group up, and the job must still run).
    """
    pid = str(os.getpid()).encode()
    for path in procs_files:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            continue
        try:
            os.write(fd, pid)
        except OSError:
            pass
        finally:
            os.close(fd)


def _make_group(own_root: str, base_name: str, group_name: str, warnings: list[str]) -> str | None:
    base = os.path.join(own_root, base_name)
    group = os.path.join(base, group_name)
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as exc:
        warnings.append(f"cannot create cgroup {base}: {exc}")
        return None
    if os.path.isdir(group):
        log.warning("removing stale cgroup %s (processes: %s)", group, sorted(_tree_pids(group)))
        _remove_tree(group, keep_top=False)
    try:
        os.mkdir(group)
    except FileExistsError:
        warnings.append(f"stale cgroup {group} could not be removed; reusing it")
    except OSError as exc:
        warnings.append(f"cannot create cgroup {group}: {exc}")
        return None
    return group


def _remove_tree(top: str, *, keep_top: bool) -> list[str]:
    """Kill and rmdir every group below ``top`` (and ``top`` unless ``keep_top``), bottom up."""
    removed: list[str] = []
    if not os.path.isdir(top):
        return removed
    _kill_tree(top)
    if not _wait_for(lambda: _tree_is_empty(top), REMOVE_TIMEOUT_SECONDS):
        log.warning(
            "cgroup %s still has processes %s after SIGKILL; leaving it",
            top,
            sorted(_tree_pids(top)),
        )
    for directory in _dirs_bottom_up(top):
        if keep_top and directory == top:
            continue
        try:
            os.rmdir(directory)
            removed.append(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", directory, exc)
    return removed


def _kill_tree(top: str) -> None:
    """SIGKILL all processes in ``top`` and the groups below it. Never raises."""
    kill_file = os.path.join(top, "cgroup.kill")
    if os.path.exists(kill_file) and _write_file(kill_file, "1"):
        return  # cgroup.kill covers all descendant groups
    for _ in range(KILL_PASSES):
        signalled = False
        for directory in _dirs_bottom_up(top):
            signalled |= _signal_members(directory, signal.SIGKILL)
        if not signalled:
            return
        _wait_for(lambda: _tree_is_empty(top), KILL_PASS_WAIT_SECONDS)


def _signal_members(directory: str, signum: int) -> bool:
    """Signal each member of one group; True if any member was found.

    A pid read from ``cgroup.procs`` could die and be reused before the signal, so each is
    pinned with a pidfd and only signalled if the group still lists it after pinning.
    """
    procs = os.path.join(directory, "cgroup.procs")
    before = _read_pids(procs)
    if not before:
        return False
    pidfds: dict[int, int] = {}
    try:
        for pid in before:
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signum)
        still = _read_pids(procs)
        for pid, fd in pidfds.items():
            if pid in still:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signum)
    finally:
        for fd in pidfds.values():
            os.close(fd)
    return True


def _tree_is_empty(top: str) -> bool:
    if not os.path.isdir(top):
        return True
    populated = _read_keyed(os.path.join(top, "cgroup.events"), "populated")
    if populated is not None:
        return populated == 0  # v2: covers descendant groups too
    return not _tree_pids(top)


def _tree_pids(top: str) -> set[int]:
    found: set[int] = set()
    for directory in _dirs_bottom_up(top):
        found |= _read_pids(os.path.join(directory, "cgroup.procs"))
    return found


def _dirs_bottom_up(top: str) -> Iterator[str]:
    """``top`` and the groups below it, deepest first."""
    if not os.path.isdir(top):
        return
    for child in _child_dirs(top):
        yield from _dirs_bottom_up(child)
    yield top
