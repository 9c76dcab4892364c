"""Per-job cgroups (being split into parts; see :mod:`.groups` for now)."""

from __future__ import annotations

from sky_mini.cgroups.groups import (
    GROUP_PREFIX,
    KILL_PASS_WAIT_SECONDS,
    KILL_PASSES,
    PEAK_AT_LIMIT_FRACTION,
    PEAK_OWN_LIMIT_FRACTION,
    POLL_INTERVAL_SECONDS,
    REMOVE_TIMEOUT_SECONDS,
    WARN_DISABLED,
    WARN_NO_KILL,
    WARN_NO_MEMORY,
    WARN_V1_KILL,
    CgroupCapabilities,
    JobCgroup,
    classify_memory_death,
    detect_capabilities,
    discard_base,
    join_cgroup_files,
    remove_base,
    sweep_base,
)
from sky_mini.cgroups.groups import _is_sweepable_name as _is_sweepable_name
from sky_mini.cgroups.groups import _read_keyed as _read_keyed

__all__ = [
    "GROUP_PREFIX",
    "KILL_PASSES",
    "KILL_PASS_WAIT_SECONDS",
    "PEAK_AT_LIMIT_FRACTION",
    "PEAK_OWN_LIMIT_FRACTION",
    "POLL_INTERVAL_SECONDS",
    "REMOVE_TIMEOUT_SECONDS",
    "WARN_DISABLED",
    "WARN_NO_KILL",
    "WARN_NO_MEMORY",
    "WARN_V1_KILL",
    "CgroupCapabilities",
    "JobCgroup",
    "classify_memory_death",
    "detect_capabilities",
    "discard_base",
    "join_cgroup_files",
    "remove_base",
    "sweep_base",
]
