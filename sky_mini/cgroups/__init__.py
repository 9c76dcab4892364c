"""Per-job cgroups: find what this host allows, then limit, count, kill and remove job groups.

Layout. Job groups live below the *server's own* cgroup, never at a hierarchy root, so that a
supervisor running inside a container or a per-shell cgroup only touches its own subtree::

    <own v1 memory cgroup>/<base_name>/<group_name>     memory limit, oom_kill counter, peak
    <own cgroup2 cgroup>/<base_name>/<group_name>       cgroup.kill, populated, (memory.max)

``base_name`` is ``sky-mini-<hash of SKY_MINI_HOME>``; ``group_name`` is ``slot-job-0`` (an
executor's group, reused job after job: :mod:`.slot`), ``job-42`` (where a slot cannot be
reused) or ``svc-web-1``. The job process writes its own pid into every group's
``cgroup.procs`` before ``exec`` (:func:`join_cgroup_files`), so all its descendants,
including those that call ``setsid`` or double-fork, stay in the groups.

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

Parts: :mod:`.detect` (own cgroup dirs and capabilities), :mod:`.groups` (one job's groups:
create, limit, join, kill, remove), :mod:`.oom` (OOM counters, peaks, the memory-death
verdict), :mod:`.slot` (an executor's reusable group), :mod:`.sweep` (a home's base dirs),
:mod:`.files` (shared name rule and file I/O).
"""

from __future__ import annotations

from sky_mini.cgroups.detect import (
    WARN_DISABLED,
    WARN_NO_KILL,
    WARN_NO_MEMORY,
    WARN_V1_KILL,
    CgroupCapabilities,
    detect_capabilities,
)
from sky_mini.cgroups.files import GROUP_PREFIX, POLL_INTERVAL_SECONDS
from sky_mini.cgroups.files import _read_keyed as _read_keyed
from sky_mini.cgroups.groups import (
    KILL_PASS_WAIT_SECONDS,
    KILL_PASSES,
    REMOVE_TIMEOUT_SECONDS,
    JobCgroup,
    join_cgroup_files,
)
from sky_mini.cgroups.oom import (
    PEAK_AT_LIMIT_FRACTION,
    PEAK_OWN_LIMIT_FRACTION,
    classify_memory_death,
)
from sky_mini.cgroups.sweep import _is_sweepable_name as _is_sweepable_name
from sky_mini.cgroups.sweep import discard_base, remove_base, sweep_base

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
