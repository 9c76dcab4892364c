"""An executor's reusable job group (a *slot*): made once, claimed by each job in turn.

Why: moving a process into a v1 memory group waits for an RCU grace period (measured
15 ms per job on a busy 2-vCPU VM, 0.6 ms on a quiet one), and each removed v1 group lingers
as a dying memcg while pages stay charged to it. With a slot the executor's ready child
(``server/backends/local/jobproc``) joins the group while the executor waits for work, so a
job starts without the move, and no group is made or removed per job.

Between jobs the slot is emptied like a removed group (SIGKILL to what is left, wait until
empty, the groups a job made below it removed) and its leftover charge (page cache the job
wrote) reclaimed with ``memory.force_empty`` once it is over ``LEFTOVER_BYTES``. Each job
then gets its own limit, a reset peak (v1 ``memory.max_usage_in_bytes``) and a fresh OOM-kill
baseline. The peak can include up to ``LEFTOVER_BYTES`` of an earlier job's cache (plus the
waiting ready child), far inside the 10 % margin :func:`classify_memory_death` allows. A host
with the v2 memory controller keeps one group per job (``memory.peak`` cannot be reset
before Linux 6.12), and so does anything here that fails: the caller then discards the slot.
"""

from __future__ import annotations

import os

from sky_mini.cgroups.detect import CgroupCapabilities
from sky_mini.cgroups.files import _read_int, _write_file
from sky_mini.cgroups.groups import JobCgroup, _remove_tree

LEFTOVER_BYTES = 1024 * 1024
"""Charge an empty slot may carry into the next job; above it, ``force_empty`` first."""

UNLIMITED_V1 = "-1"


def open_slot(caps: CgroupCapabilities, base_name: str, group_name: str) -> JobCgroup | None:
    """Make (or replace a stale) slot group; None where a slot cannot be reused."""
    if caps.v2_memory or (caps.v1_memory_root is None and caps.v2_root is None):
        return None
    group = JobCgroup.create(caps, base_name, group_name, None)
    return group if group.paths else None


def claim_slot(group: JobCgroup, limit_bytes: int | None) -> bool:
    """Ready an emptied slot for one job: its limit, a reset peak, the OOM baseline.

    False when the slot cannot be trusted for it (a file would not take the value, or more
    than ``LEFTOVER_BYTES`` is still charged): the caller discards it.
    """
    if group.v1_dir is not None:
        usage = _read_int(os.path.join(group.v1_dir, "memory.usage_in_bytes"))
        if usage is None or usage > LEFTOVER_BYTES:
            return False
        limit = UNLIMITED_V1 if limit_bytes is None else str(int(limit_bytes))
        if not _write_file(os.path.join(group.v1_dir, "memory.limit_in_bytes"), limit):
            return False
        if limit_bytes is not None:
            _write_file(os.path.join(group.v1_dir, "memory.swappiness"), "0")
        if not _write_file(os.path.join(group.v1_dir, "memory.max_usage_in_bytes"), "0"):
            return False
    group.memory_limit_bytes = limit_bytes
    group.memory_limited = limit_bytes is not None and group.v1_dir is not None
    group.oom_kill_baseline = group.oom_kill_count()
    return True


def release_slot(group: JobCgroup) -> bool:
    """After a job (its results read): kill what is left, wait until the slot is empty,
    remove groups the job made below it, reclaim a large leftover charge. False: discard."""
    for directory in group.paths:
        _remove_tree(directory, keep_top=True)
    if not group.is_empty():
        return False
    if group.v1_dir is not None:
        usage = _read_int(os.path.join(group.v1_dir, "memory.usage_in_bytes"))
        if usage is None:
            return False
        if usage > LEFTOVER_BYTES:
            _write_file(os.path.join(group.v1_dir, "memory.force_empty"), "0")
    return True
