"""Detection: find this process's own cgroup dirs and what the host lets it do with them."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from sky_mini.cgroups.files import (
    GROUP_PREFIX,
    _child_dirs,
    _read_text,
    _read_words,
    _write_file,
)

log = logging.getLogger("sky_mini.cgroups")

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
