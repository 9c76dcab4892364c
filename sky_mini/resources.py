"""How many CPUs and how much memory this machine really gives us, and the executor pool size.

Detection, per resource, takes the first of: the environment (``SKY_MINI_CPUS``,
``SKY_MINI_MEMORY``), ``config.yaml`` (``resources.cpus``, ``resources.memory``), the cgroup
limits of this process and all its ancestors (v2 ``cpu.max``/``memory.max``, v1
``cpu.cfs_quota_us``/``memory.limit_in_bytes``), the CPU affinity mask (CPUs only), the host.
Python itself reports the host even inside a limited cgroup, so the limits are read from
``/proc/self/cgroup`` and ``/proc/self/mountinfo`` here.

Pool sizing::

    job_executors = clamp(min(floor(cpus),
                              floor((memory - SERVER_RESERVE_MEMORY_BYTES)
                                    / MEMORY_PER_EXECUTOR_BYTES)),
                          1, MAX_JOB_EXECUTORS)

unless ``--executors N`` overrides it. The server's reserve is subtracted once; internal
components (status, services controller) are not job executors and are not counted.

A leaf module: it imports only the standard library, ``sky_mini.units``, ``sky_mini.errors``
and (lazily) ``psutil``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from sky_mini.errors import UsageError
from sky_mini.units import format_size, parse_size

CPUS_ENV = "SKY_MINI_CPUS"
MEMORY_ENV = "SKY_MINI_MEMORY"

SERVER_RESERVE_MEMORY_BYTES = 256 * 1024**2
MEMORY_PER_EXECUTOR_BYTES = 256 * 1024**2
RECOMMENDED_MIN_CPUS = 1.0
RECOMMENDED_MIN_MEMORY_BYTES = 2 * 1024**3
MAX_JOB_EXECUTORS = 64

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX (9223372036854771712); anything this
# large cannot be a real limit.
V1_UNLIMITED_MEMORY_BYTES = 2**62

_OCTAL_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class DetectedResources:
    """What this process may use, where each number came from, and why."""

    cpus: float
    cpus_source: str  # "override" | "config" | "cgroup" | "affinity" | "host"
    cpus_detail: str
    memory_bytes: int
    memory_source: str  # "override" | "config" | "cgroup" | "host"
    memory_detail: str

    def to_json(self) -> dict[str, object]:
        """All fields as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class PoolSize:
    """How many job executors to run, and the reasoning in words."""

    job_executors: int
    usable_memory_bytes: int
    low_resource: bool
    warning: str | None
    explanation: str

    def to_json(self) -> dict[str, object]:
        """All fields as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class CgroupLimit:
    """One cgroup limit (CPUs or bytes) and the file it was read from, for people."""

    value: float
    detail: str


@dataclass(frozen=True)
class _Mount:
    root: str  # the mountinfo "root" field: the hierarchy path that is mounted
    mount_point: str  # absolute path, as the process sees it (without the fake ``root``)
    fstype: str
    super_options: frozenset[str]


# --- detection ----------------------------------------------------------------------------


def detect_resources(
    env: Mapping[str, str] | None = None,
    config_cpus: float | None = None,
    config_memory_bytes: int | None = None,
    *,
    root: str = "/",
    affinity: Callable[[], set[int]] | None = None,
    host_cpus: Callable[[], int] | None = None,
    host_memory: Callable[[], int] | None = None,
) -> DetectedResources:
    """Find the CPUs and memory this process may use.

    Order per resource: environment > config > cgroup > affinity (CPUs only) > host. Without
    an override, the CPU count is the smallest of the cgroup quota, the affinity mask and the
    host count, and memory the smaller of the cgroup limit and host memory. A fractional quota
    stays fractional (0.5 CPU). ``root`` is the filesystem root to read ``proc`` and ``sys``
    under, so tests can use a fake tree. A missing or unreadable cgroup file means "no limit
    there" and never fails.

    Raises UsageError when ``SKY_MINI_CPUS``/``SKY_MINI_MEMORY`` or a config value is not a
    positive number/size. An empty variable counts as unset.
    """
    source = os.environ if env is None else env
    env_cpus = _env_cpus(source)
    env_memory = _env_memory(source)
    _check_config(config_cpus, config_memory_bytes)

    if env_cpus is not None:
        cpus, cpus_source, cpus_detail = env_cpus, "override", f"{CPUS_ENV}={env_cpus:g}"
    elif config_cpus is not None:
        cpus, cpus_source = float(config_cpus), "config"
        cpus_detail = f"config.yaml resources.cpus={config_cpus:g}"
    else:
        cpus, cpus_source, cpus_detail = _detect_cpus(root, affinity, host_cpus)

    if env_memory is not None:
        memory, memory_source = env_memory, "override"
        memory_detail = f"{MEMORY_ENV}={source[MEMORY_ENV].strip()} ({format_size(env_memory)})"
    elif config_memory_bytes is not None:
        memory, memory_source = int(config_memory_bytes), "config"
        memory_detail = f"config.yaml resources.memory={format_size(config_memory_bytes)}"
    else:
        # Only here is host memory needed, so psutil (~30 ms to import) is loaded only here.
        host = (host_memory or _default_host_memory)()
        memory, memory_source, memory_detail = _detect_memory(root, host)

    return DetectedResources(
        cpus=cpus,
        cpus_source=cpus_source,
        cpus_detail=cpus_detail,
        memory_bytes=memory,
        memory_source=memory_source,
        memory_detail=memory_detail,
    )


def _env_cpus(env: Mapping[str, str]) -> float | None:
    raw = env.get(CPUS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UsageError(
            f"{CPUS_ENV}={raw!r} is not a positive number of CPUs; use e.g. 1, 0.5 or 2"
        )
    return value


def _env_memory(env: Mapping[str, str]) -> int | None:
    raw = env.get(MEMORY_ENV, "").strip()
    if not raw:
        return None
    try:
        value = parse_size(raw)
    except ValueError:
        raise UsageError(f"{MEMORY_ENV}={raw!r} is not a size; use e.g. 2G or 512M") from None
    if value <= 0:
        raise UsageError(f"{MEMORY_ENV}={raw!r} must be more than zero; use e.g. 2G or 512M")
    return value


def _check_config(cpus: float | None, memory_bytes: int | None) -> None:
    if cpus is not None and not (math.isfinite(cpus) and cpus > 0):
        raise UsageError(
            f"config.yaml: key 'resources.cpus' is {cpus!r}; use a positive number such as 1 "
            "or 0.5, or remove it to detect the CPUs"
        )
    if memory_bytes is not None and memory_bytes <= 0:
        raise UsageError(
            f"config.yaml: key 'resources.memory' is {memory_bytes!r} bytes; use a size such "
            "as 2G or 512M, or remove it to detect the memory"
        )


def _default_host_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def _default_affinity() -> set[int]:
    return os.sched_getaffinity(0)


def _default_host_cpus() -> int:
    return os.cpu_count() or 1


def _detect_cpus(
    root: str,
    affinity: Callable[[], set[int]] | None,
    host_cpus: Callable[[], int] | None,
) -> tuple[float, str, str]:
    host = max(1, (host_cpus or _default_host_cpus)())
    try:
        allowed: int | None = len((affinity or _default_affinity)()) or None
    except (AttributeError, OSError):
        allowed = None  # no sched_getaffinity on this platform
    quota = read_cgroup_cpu_limit(root)

    # Ties go to the more specific source: a quota equal to the affinity count is "cgroup".
    if quota is not None and quota.value <= min(allowed or host, host):
        return quota.value, "cgroup", quota.detail
    if allowed is not None and allowed < host:
        detail = f"sched_getaffinity: {allowed} of {host} CPUs"
        if quota is not None:
            detail += f" (tighter than {quota.detail})"
        return float(allowed), "affinity", detail
    detail = f"os.cpu_count()={host}"
    if quota is not None:
        detail += f" (tighter than {quota.detail})"
    return float(host), "host", detail


def _detect_memory(root: str, host: int) -> tuple[int, str, str]:
    limit = read_cgroup_memory_limit(root)
    # A limit at or above host memory does not limit anything we can use.
    if limit is not None and limit.value < host:
        return int(limit.value), "cgroup", limit.detail
    detail = f"host total {format_size(host)}"
    if limit is not None:
        detail += f" (not above {limit.detail})"
    return host, "host", detail


def read_cgroup_cpu_limit(root: str = "/") -> CgroupLimit | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup or any ancestor, or None.

    Reads v2 ``cpu.max`` and v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``; both kinds are
    read and the tightest wins, so hybrid hosts (v1 controllers, v2 without them) work.
    """
    found: list[CgroupLimit] = []
    for directory in _cgroup_dirs(root, "cgroup2", ""):
        limit = _read_v2_cpu(directory)
        if limit is not None:
            found.append(limit)
    for directory in _cgroup_dirs(root, "cgroup", "cpu"):
        limit = _read_v1_cpu(directory)
        if limit is not None:
            found.append(limit)
    return min(found, key=lambda limit: limit.value, default=None)


def read_cgroup_memory_limit(root: str = "/") -> CgroupLimit | None:
    """The tightest memory limit (bytes) on this process's cgroup or any ancestor, or None.

    Reads v2 ``memory.max`` and v1 ``memory.limit_in_bytes`` (v1 values of 2**62 or more
    mean "unlimited"); the tightest wins.
    """
    found: list[CgroupLimit] = []
    for directory in _cgroup_dirs(root, "cgroup2", ""):
        text = _read_text(os.path.join(directory, "memory.max"))
        if text is not None and text != "max" and text.isdigit():
            found.append(CgroupLimit(int(text), f"cgroup v2 memory.max={text} at {directory}"))
    for directory in _cgroup_dirs(root, "cgroup", "memory"):
        path = os.path.join(directory, "memory.limit_in_bytes")
        text = _read_text(path)
        if text is not None and text.isdigit() and int(text) < V1_UNLIMITED_MEMORY_BYTES:
            detail = f"cgroup v1 memory.limit_in_bytes={text} at {directory}"
            found.append(CgroupLimit(int(text), detail))
    return min(found, key=lambda limit: limit.value, default=None)


def _read_v2_cpu(directory: str) -> CgroupLimit | None:
    text = _read_text(os.path.join(directory, "cpu.max"))
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return CgroupLimit(quota / period, f"cgroup v2 cpu.max={quota} {period} at {directory}")


def _read_v1_cpu(directory: str) -> CgroupLimit | None:
    quota = _read_int(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read_int(os.path.join(directory, "cpu.cfs_period_us"))
    # -1 means "no quota".
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    detail = f"cgroup v1 cpu.cfs_quota_us={quota}/cfs_period_us={period} at {directory}"
    return CgroupLimit(quota / period, detail)


def _cgroup_dirs(root: str, fstype: str, controller: str) -> list[str]:
    """This process's cgroup directory for one hierarchy, then each ancestor up to the mount.

    ``fstype`` is ``cgroup2`` (controller ignored) or ``cgroup`` (v1, for ``controller``).
    Returns an empty list when the hierarchy is not mounted or the process is not in it.
    """
    process_path = _process_cgroup_path(root, fstype, controller)
    if process_path is None:
        return []
    mounts = [m for m in _read_mounts(root) if m.fstype == fstype]
    if fstype == "cgroup":
        mounts = [m for m in mounts if controller in m.super_options]
    # Prefer a mount whose root contains the process (several bind mounts may exist).
    mounts.sort(key=lambda m: not _is_within(process_path, m.root))
    if not mounts:
        return []
    mount = mounts[0]
    if _is_within(process_path, mount.root):
        relative = process_path[len(mount.root.rstrip("/")) :].strip("/")
    else:
        # Inside some containers the process path lies outside the mounted subtree; the mount
        # point itself is then the closest directory we can read.
        relative = ""
    base = os.path.join(root, mount.mount_point.lstrip("/")).rstrip("/") or "/"
    parts = [part for part in relative.split("/") if part]
    return [os.path.join(base, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def _process_cgroup_path(root: str, fstype: str, controller: str) -> str | None:
    text = _read_text(os.path.join(root, "proc/self/cgroup"))
    if text is None:
        return None
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy_id, controllers, path = fields
        if fstype == "cgroup2" and hierarchy_id == "0" and controllers == "":
            return path
        if fstype == "cgroup" and controller in controllers.split(","):
            return path
    return None


def _read_mounts(root: str) -> list[_Mount]:
    text = _read_text(os.path.join(root, "proc/self/mountinfo"))
    mounts: list[_Mount] = []
    for line in (text or "").splitlines():
        # id parent major:minor root mount-point options [optional...] - fstype source super
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mounts.append(
            _Mount(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fstype=tail[0],
                super_options=frozenset(tail[2].split(",")),
            )
        )
    return mounts


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    return _OCTAL_ESCAPE_RE.sub(lambda match: chr(int(match.group(1), 8)), field)


def _is_within(path: str, ancestor: str) -> bool:
    ancestor = ancestor.rstrip("/")
    return path == ancestor or path.startswith(ancestor + "/") or not ancestor


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


# --- pool sizing --------------------------------------------------------------------------


def size_pool(cpus: float, memory_bytes: int, override: int | None = None) -> PoolSize:
    """Size the job executor pool for ``cpus`` and ``memory_bytes`` (see the module docstring).

    ``override`` (``--executors``) wins when given; below 1 it raises UsageError. The result
    always has at least one executor. ``usable_memory_bytes`` is memory minus the server's
    reserve, floored at one executor's share so that it stays positive on tiny machines (the
    one guaranteed executor must be allowed some memory). ``low_resource`` is set below
    RECOMMENDED_MIN_CPUS or RECOMMENDED_MIN_MEMORY_BYTES, with a one-line ``warning``.
    """
    if override is not None and override < 1:
        raise UsageError(f"--executors {override} is too small; use 1 or more, e.g. --executors 2")
    if not (math.isfinite(cpus) and cpus > 0) or memory_bytes <= 0:
        raise ValueError(f"cpus and memory must be positive, got {cpus!r} and {memory_bytes!r}")

    usable = max(memory_bytes - SERVER_RESERVE_MEMORY_BYTES, MEMORY_PER_EXECUTOR_BYTES)
    if override is not None:
        count = override
        explanation = f"{_executors(count)} (set by --executors)"
    else:
        by_cpu = math.floor(cpus)
        by_memory = (memory_bytes - SERVER_RESERVE_MEMORY_BYTES) // MEMORY_PER_EXECUTOR_BYTES
        raw = min(by_cpu, by_memory)
        count = min(max(1, raw), MAX_JOB_EXECUTORS)
        explanation = (
            f"{_executors(count)} = max(1, min(floor({cpus:g} CPU), "
            f"floor(({format_size(memory_bytes)} - {format_size(SERVER_RESERVE_MEMORY_BYTES)} "
            f"reserve) / {format_size(MEMORY_PER_EXECUTOR_BYTES)})))"
        )
        if raw > MAX_JOB_EXECUTORS:
            explanation += f", capped at {MAX_JOB_EXECUTORS}"

    low = cpus < RECOMMENDED_MIN_CPUS or memory_bytes < RECOMMENDED_MIN_MEMORY_BYTES
    warning = None
    if low:
        warning = (
            f"low-resource mode: {cpus:g} CPU / {format_size(memory_bytes)} is below the "
            f"recommended {RECOMMENDED_MIN_CPUS:g} CPU / "
            f"{format_size(RECOMMENDED_MIN_MEMORY_BYTES)}; running {_executors(count)}"
        )
    return PoolSize(
        job_executors=count,
        usable_memory_bytes=usable,
        low_resource=low,
        warning=warning,
        explanation=explanation,
    )


def _executors(count: int) -> str:
    return f"{count} job executor" + ("" if count == 1 else "s")
