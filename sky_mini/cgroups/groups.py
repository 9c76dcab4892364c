"""Per-job cgroups: find what this host allows, then limit, count, kill and remove job groups.

Layout. Job groups live below the *server's own* cgroup, never at a hierarchy root, so that a
supervisor running inside a container or a per-shell cgroup only touches its own subtree::

    <own v1 memory cgroup>/<base_name>/<group_name>     memory limit, oom_kill counter, peak
    <own cgroup2 cgroup>/<base_name>/<group_name>       cgroup.kill, populated, (memory.max)

``base_name`` is ``sky-mini-<hash of SKY_MINI_HOME>``; ``group_name`` is ``job-42`` or
``svc-web-1``. The forked job child writes its own pid into every group's ``cgroup.procs``
before ``exec`` (:func:`join_cgroup_files`), so all its descendants, including those that call
``setsid`` or double-fork, stay in the groups.

Hosts differ: a hybrid host (these VMs) has a writable v1 ``memory`` hierarchy and a cgroup2
hierarchy at ``/sys/fs/cgroup/unified`` without the memory controller; a pure-v2 host has both
in one hierarchy; a container may have neither. :func:`detect_capabilities` reports what is
usable, with one warning line per missing piece, and everything else degrades: without a
memory controller limits fall back to the RSS watchdog; without ``cgroup.kill`` a stop sends
SIGKILL to the v1 group's members pass by pass; without any group only the process group and
the subreaper are left. Nothing here raises for a cgroup problem at run time.

Measured on the hybrid VMs (Linux 6.18, v1 memory + cgroup2 without memory):

* A v1 group with ``memory.limit_in_bytes=50M``: ``bytearray(200 MiB)`` is SIGKILLed (137),
  ``memory.oom_control`` ``oom_kill`` goes 0 -> 1, ``memory.max_usage_in_bytes`` == limit.
* ``sh -c 'python ...; exit 0'`` in such a group exits **0**, yet ``oom_kill`` increments.
* Hierarchical OOM: with the limit on the PARENT group and the job in an unlimited child,
  the kill is counted in the **victim's (child's) group only** (child ``oom_kill`` 1, parent
  ``oom_kill`` 0; v1 does not propagate this counter upwards). The parent's ``memory.failcnt``
  rises, the child's stays 0, and the child's peak is about the parent's limit. The same holds
  when the child has its own, larger limit. So a job group's ``oom_kill`` counter does *not*
  say whose limit was hit: :func:`classify_memory_death` reports ``"oom"`` (host/container)
  when no job limit is set, or when the peak stayed well below the job's own limit.
  (On v2, ``memory.events`` ``oom_kill`` also counts in the victim's group and its ancestors.)
* ``/proc/vmstat`` ``oom_kill`` counts memcg OOM kills too (machine-wide fallback).
* cgroup2: ``echo 1 > cgroup.kill`` killed a tree including a ``setsid`` grandchild at once;
  ``cgroup.events`` went to ``populated 0`` and ``rmdir`` succeeded although the reparented
  grandchild was still an unreaped zombie. ``+memory`` cannot be enabled there. The v2
  hierarchy root has no ``cgroup.kill`` file; only child groups do.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

log = logging.getLogger("sky_mini.cgroups")

GROUP_PREFIX = "sky-mini-"
"""Only directories named like this (or below one) are ever killed or removed."""

REMOVE_TIMEOUT_SECONDS = 2.0
"""How long :meth:`JobCgroup.remove` waits for a killed group to empty before giving up."""

KILL_PASSES = 20
"""How many SIGKILL passes the v1-only kill makes over ``cgroup.procs`` (a forking job)."""

KILL_PASS_WAIT_SECONDS = 0.1
"""How long each v1 kill pass waits for the signalled members to leave the group."""

POLL_INTERVAL_SECONDS = 0.005

PEAK_AT_LIMIT_FRACTION = 0.99
"""A SIGKILLed job whose peak reached this fraction of its limit died of the limit."""

PEAK_OWN_LIMIT_FRACTION = 0.90
"""An OOM kill with the peak below this fraction of the job's limit came from elsewhere."""

WARN_DISABLED = "cgroups disabled by SKY_MINI_DISABLE"
WARN_NO_MEMORY = (
    "no writable cgroup v1/v2 memory controller: memory limits fall back to the RSS watchdog"
)
WARN_V1_KILL = (
    "no cgroup2 hierarchy with cgroup.kill: stopping a job sends SIGKILL to the members of "
    "its v1 memory cgroup pass by pass"
)
WARN_NO_KILL = (
    "no writable cgroup: descendants of a job that call setsid can escape a stop "
    "(only the subreaper catches them)"
)


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class CgroupCapabilities:
    """What this host lets the calling process do with cgroups."""

    v1_memory_root: str | None
    """Own v1 memory cgroup dir where job groups can be created; None if unusable."""
    v2_root: str | None
    """Own cgroup2 dir where job groups with ``cgroup.kill`` can be created; None if unusable."""
    v2_memory: bool
    """The cgroup2 dir has the memory controller enabled for its children."""
    warnings: tuple[str, ...] = ()
    """One line per missing capability, naming the consequence."""

    @property
    def can_limit_memory(self) -> bool:
        """The kernel can enforce a per-job memory limit (v1 memory or v2 ``memory.max``)."""
        return self.v1_memory_root is not None or (self.v2_root is not None and self.v2_memory)

    @property
    def can_kill_tree(self) -> bool:
        """A job's whole tree, ``setsid`` descendants included, can be found and killed."""
        return self.v1_memory_root is not None or self.v2_root is not None

    @property
    def kill_method(self) -> str | None:
        if self.v2_root is not None:
            return "cgroup.kill"
        if self.v1_memory_root is not None:
            return "sigkill cgroup.procs"
        return None

    @property
    def memory_limit_method(self) -> str | None:
        if self.v1_memory_root is not None:
            return "cgroup v1 memory.limit_in_bytes"
        if self.v2_root is not None and self.v2_memory:
            return "cgroup v2 memory.max"
        return None

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary for ``api status --json``."""
        return {
            "v1_memory_root": self.v1_memory_root,
            "v2_root": self.v2_root,
            "v2_memory": self.v2_memory,
            "can_limit_memory": self.can_limit_memory,
            "can_kill_tree": self.can_kill_tree,
            "memory_limit_method": self.memory_limit_method,
            "kill_method": self.kill_method,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class _Mount:
    mount_point: str
    root: str
    fstype: str
    super_options: frozenset[str]


def detect_capabilities(*, root: str = "/", disabled: bool = False) -> CgroupCapabilities:
    """Find the calling process's own cgroups and check that job groups can be made in them.

    Reads ``<root>/proc/self/cgroup`` and ``<root>/proc/self/mountinfo`` and maps each own
    cgroup path through its mount's root field (a container without a cgroup namespace sees
    ``/docker/<id>`` mounted at ``/sys/fs/cgroup/memory``). With ``root == "/"`` writability is
    proven by creating and removing a probe group; for a fake tree ``os.access`` is used.
    Never raises: anything unreadable counts as unavailable.
    """
    if disabled:
        return CgroupCapabilities(None, None, False, (WARN_DISABLED,))
    real = os.path.abspath(root) == "/"
    own = _read_own_cgroups(root)
    mounts = _read_mounts(root)

    v1_dir = _map_own_dir(root, own.get("memory"), mounts, _is_v1_memory)
    if v1_dir is not None and not _v1_usable(v1_dir, real):
        v1_dir = None

    v2_dir = _map_own_dir(root, own.get(""), mounts, lambda m: m.fstype == "cgroup2")
    if v2_dir is not None and not _v2_usable(v2_dir, real):
        v2_dir = None
    v2_memory = v2_dir is not None and "memory" in _read_words(
        os.path.join(v2_dir, "cgroup.subtree_control")
    )

    caps = CgroupCapabilities(v1_dir, v2_dir, v2_memory)
    warnings: list[str] = []
    if not caps.can_limit_memory:
        warnings.append(WARN_NO_MEMORY)
    if v2_dir is None:
        warnings.append(WARN_V1_KILL if v1_dir is not None else WARN_NO_KILL)
    return CgroupCapabilities(v1_dir, v2_dir, v2_memory, tuple(warnings))


def _read_own_cgroups(root: str) -> dict[str, str]:
    """Map controller name (``""`` for cgroup2) to this process's cgroup path."""
    own: dict[str, str] = {}
    text = _read_text(os.path.join(root, "proc/self/cgroup"))
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and controllers == "":
            own.setdefault("", path)
            continue
        for controller in controllers.split(","):
            if controller:
                own.setdefault(controller, path)
    return own


def _read_mounts(root: str) -> list[_Mount]:
    mounts: list[_Mount] = []
    text = _read_text(os.path.join(root, "proc/self/mountinfo"))
    for line in (text or "").splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 4:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            _Mount(
                mount_point=_unescape_mount_field(fields[4]),
                root=_unescape_mount_field(fields[3]),
                fstype=fstype,
                super_options=frozenset(fields[sep + 3].split(",")),
            )
        )
    return mounts


def _unescape_mount_field(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _is_v1_memory(mount: _Mount) -> bool:
    return mount.fstype == "cgroup" and "memory" in mount.super_options


def _map_own_dir(
    root: str, own_path: str | None, mounts: list[_Mount], wanted: Callable[[_Mount], bool]
) -> str | None:
    """Translate an own cgroup path into a directory through the first mount that shows it."""
    if own_path is None or not own_path.startswith("/") or "/.." in own_path:
        return None
    for mount in mounts:
        if not wanted(mount):
            continue
        mount_root = mount.root.rstrip("/")
        if own_path != mount_root and not own_path.startswith(mount_root + "/"):
            continue
        relative = own_path[len(mount_root) :].strip("/")
        directory = os.path.join(root, mount.mount_point.lstrip("/"), relative)
        directory = os.path.normpath(directory)
        if os.path.isdir(directory):
            return directory
    return None


def _v1_usable(directory: str, real: bool) -> bool:
    if not real:
        return os.access(directory, os.W_OK | os.X_OK)

    def check(probe: str) -> bool:
        # Setting "no limit" proves the limit file is writable without changing anything.
        return _write_file(os.path.join(probe, "memory.limit_in_bytes"), "-1")

    return _probe(directory, check)


def _v2_usable(directory: str, real: bool) -> bool:
    if not real:
        return os.access(directory, os.W_OK | os.X_OK) and _has_kill_file(directory)

    def check(probe: str) -> bool:
        return os.path.exists(os.path.join(probe, "cgroup.kill"))

    return _probe(directory, check)


def _has_kill_file(directory: str) -> bool:
    """True if the dir or one of its child groups has ``cgroup.kill`` (a root group has none)."""
    if os.path.exists(os.path.join(directory, "cgroup.kill")):
        return True
    return any(os.path.exists(os.path.join(d, "cgroup.kill")) for d in _child_dirs(directory))


def _probe(directory: str, check: Callable[[str], bool]) -> bool:
    probe = os.path.join(directory, f"{GROUP_PREFIX}probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except FileExistsError:
        pass
    except OSError as exc:
        log.debug("cannot create a cgroup in %s: %s", directory, exc)
        return False
    try:
        return check(probe)
    finally:
        try:
            os.rmdir(probe)
        except OSError as exc:
            log.warning("cannot remove cgroup probe %s: %s", probe, exc)


# --------------------------------------------------------------------------- job groups


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
        if self.v1_dir is not None:
            value = _read_keyed(os.path.join(self.v1_dir, "memory.oom_control"), "oom_kill")
            if value is not None:
                return value
        if self.v2_dir is not None:
            return _read_keyed(os.path.join(self.v2_dir, "memory.events"), "oom_kill")
        return None

    def oom_kills_since_start(self) -> int | None:
        count = self.oom_kill_count()
        if count is None:
            return None
        return max(0, count - (self.oom_kill_baseline or 0))

    def peak_memory_bytes(self) -> int | None:
        return self._read_memory("memory.max_usage_in_bytes", "memory.peak")

    def current_memory_bytes(self) -> int | None:
        return self._read_memory("memory.usage_in_bytes", "memory.current")

    def _read_memory(self, v1_file: str, v2_file: str) -> int | None:
        if self.v1_dir is not None:
            value = _read_int(os.path.join(self.v1_dir, v1_file))
            if value is not None:
                return value
        if self.v2_dir is not None:
            return _read_int(os.path.join(self.v2_dir, v2_file))
        return None

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


def sweep_base(
    caps: CgroupCapabilities, base_name: str, extra_dirs: Iterable[str] = ()
) -> list[str]:
    """Kill and remove leftover groups from an earlier server instance; return removed dirs.

    Empties ``<v1_memory_root>/<base_name>`` and ``<v2_root>/<base_name>`` (the base dirs
    stay) and removes each of ``extra_dirs`` (group dirs recorded in state, possibly below
    another parent cgroup), then its parent base dir if that is left empty. Only directories
    on a cgroup filesystem whose last component starts with ``sky-mini-``, or that lie below
    such a directory, are ever touched.
    """
    _check_name(base_name, must_have_prefix=True)
    removed: list[str] = []
    for own_root in (caps.v1_memory_root, caps.v2_root):
        if own_root is None:
            continue
        base = os.path.join(own_root, base_name)
        if _is_sweepable(base):
            removed += _remove_tree(base, keep_top=True)
    for directory in extra_dirs:
        directory = os.path.normpath(directory)
        if not _is_sweepable(directory):
            if os.path.isdir(directory):
                log.warning("not sweeping %s: not a sky-mini cgroup", directory)
            continue
        removed += _remove_tree(directory, keep_top=False)
        parent = os.path.dirname(directory)
        if (
            os.path.basename(parent).startswith(GROUP_PREFIX)
            and _is_sweepable(parent)
            and not _child_dirs(parent)
        ):
            with contextlib.suppress(OSError):
                os.rmdir(parent)
                removed.append(parent)
    return removed


def remove_base(caps: CgroupCapabilities, base_name: str) -> None:
    """Remove the (empty) base dirs at clean shutdown; warn, never raise, if one is in use."""
    _check_name(base_name, must_have_prefix=True)
    for own_root in (caps.v1_memory_root, caps.v2_root):
        if own_root is None:
            continue
        base = os.path.join(own_root, base_name)
        try:
            os.rmdir(base)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", base, exc)


def discard_base(caps: CgroupCapabilities, base_name: str) -> None:
    """Kill and remove every group of a home that is going away, and its base dirs.

    For a home no server will start again (a test's, a benchmark's): after a SIGKILLed
    server, only the next start of the same home would sweep them.
    """
    with contextlib.suppress(OSError):
        sweep_base(caps, base_name)
    remove_base(caps, base_name)


def classify_memory_death(
    limit_bytes: int | None,
    peak_bytes: int | None,
    oom_kills: int | None,
    killed_by_signal: int | None,
) -> str | None:
    """Say whether a finished job died of memory: ``"memory_limit"``, ``"oom"`` or None.

    ``oom_kills`` is the job group's counter delta; it also counts kills forced by an
    ancestor's limit or by the host (see the module docstring). So a recorded kill is the
    job's own ``"memory_limit"`` only if it has a limit and its peak got near it (or the peak
    is unknown); otherwise it is ``"oom"``, a host or container OOM. Without a counter, a
    SIGKILL with the peak at >= 99 % of the limit is taken as the limit. A known zero
    counter is trusted: a SIGKILL at the limit is then someone's kill, not an OOM.
    """
    if oom_kills is not None and oom_kills > 0:
        if limit_bytes is None:
            return "oom"
        if peak_bytes is not None and peak_bytes < PEAK_OWN_LIMIT_FRACTION * limit_bytes:
            return "oom"
        return "memory_limit"
    if (
        oom_kills is None
        and limit_bytes is not None
        and peak_bytes is not None
        and killed_by_signal == signal.SIGKILL
        and peak_bytes >= PEAK_AT_LIMIT_FRACTION * limit_bytes
    ):
        return "memory_limit"
    return None


# --------------------------------------------------------------------------- helpers


def _check_name(name: str, *, must_have_prefix: bool) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"invalid cgroup name {name!r}: must be one path component")
    if must_have_prefix and not name.startswith(GROUP_PREFIX):
        raise ValueError(f"invalid cgroup base name {name!r}: must start with {GROUP_PREFIX!r}")


def _is_sweepable_name(path: str) -> bool:
    """True if the path's last component, or a component above it, starts with sky-mini-."""
    parts = [p for p in os.path.normpath(path).split("/") if p]
    if not os.path.isabs(path) or ".." in parts:
        return False
    return any(p.startswith(GROUP_PREFIX) for p in parts)


def _is_sweepable(path: str) -> bool:
    return (
        _is_sweepable_name(path)
        and os.path.isdir(path)
        and not os.path.islink(path)
        and _on_cgroup_fs(path)
    )


def _on_cgroup_fs(path: str) -> bool:
    """True if ``path`` lies strictly below a cgroup mount point of this process."""
    real = os.path.realpath(path)
    for mount in _read_mounts("/"):
        point = mount.mount_point.rstrip("/")
        if real.startswith(point + "/"):
            return True
    return False


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


def _child_dirs(directory: str) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(POLL_INTERVAL_SECONDS, remaining))


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _read_words(path: str) -> set[str]:
    return set((_read_text(path) or "").split())


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_keyed(path: str, key: str) -> int | None:
    """The integer after ``key`` in a flat-keyed file such as ``memory.events``."""
    for line in (_read_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            try:
                return int(parts[1])
            except ValueError:
                return None
    return None


def _read_pids(path: str) -> set[int]:
    pids: set[int] = set()
    for word in (_read_text(path) or "").split():
        with contextlib.suppress(ValueError):
            pids.add(int(word))
    return pids


def _write_file(path: str, value: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        log.debug("cannot open %s: %s", path, exc)
        return False
    try:
        os.write(fd, value.encode())
        return True
    except OSError as exc:
        log.debug("cannot write %r to %s: %s", value, path, exc)
        return False
    finally:
        os.close(fd)
