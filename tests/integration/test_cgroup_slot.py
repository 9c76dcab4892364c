"""Real cgroups: an executor's slot group (``cgroups.slot``) reused job after job keeps
each job's peak, OOM count and limit its own, and is emptied between jobs."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from sky_mini.cgroups import CgroupCapabilities, classify_memory_death
from sky_mini.cgroups.slot import claim_slot, open_slot, release_slot
from tests.helpers import wait_for
from tests.integration.test_cgroups_real import (  # noqa: F401 - fixtures
    ALLOC_200M,
    HOLD_20M,
    LIMIT,
    TIMEOUT,
    MiB,
    Procs,
    base_name,
    caps,
    has_exited,
    need_memory,
    procs,
)


def test_each_job_in_a_slot_gets_its_own_peak_oom_count_and_limit(
    caps: CgroupCapabilities,  # noqa: F811
    base_name: str,  # noqa: F811
    procs: Procs,  # noqa: F811
) -> None:
    need_memory(caps)
    slot = open_slot(caps, base_name, "slot-job-0")
    assert slot is not None and claim_slot(slot, LIMIT) and slot.memory_limited
    first = procs.spawn([sys.executable, "-c", ALLOC_200M], slot.procs_files())
    assert first.wait(timeout=TIMEOUT) == -signal.SIGKILL
    kills, peak = slot.oom_kills_since_start(), slot.peak_memory_bytes()
    assert kills is not None and kills >= 1 and peak is not None and peak >= 0.95 * LIMIT
    assert classify_memory_death(LIMIT, peak, kills, signal.SIGKILL) == "memory_limit"
    assert release_slot(slot)
    # Left as it is, the next job would inherit that peak and that OOM kill: the check
    # below fails without claim_slot's reset (negative control).
    stale = slot.peak_memory_bytes()
    assert stale is not None and stale >= 0.95 * LIMIT
    assert claim_slot(slot, None) and not slot.memory_limited
    second = procs.spawn(["true"], slot.procs_files())
    assert second.wait(timeout=TIMEOUT) == 0
    peak = slot.peak_memory_bytes()
    assert slot.oom_kills_since_start() == 0
    assert peak is not None and peak < 10 * MiB
    assert classify_memory_death(None, peak, 0, None) is None


def test_release_kills_what_is_left_and_removes_groups_made_below(
    caps: CgroupCapabilities,  # noqa: F811
    base_name: str,  # noqa: F811
    procs: Procs,  # noqa: F811
    tmp_path: Path,
) -> None:
    slot = open_slot(caps, base_name, "slot-job-0")
    assert slot is not None and claim_slot(slot, None)
    _, grandchild = procs.spawn_setsid_tree(tmp_path, slot.procs_files())
    below = [os.path.join(d, "made-by-the-job") for d in slot.paths]
    for directory in below:
        os.mkdir(directory)
    assert release_slot(slot)
    wait_for(lambda: has_exited(grandchild), TIMEOUT, "setsid grandchild killed")
    assert slot.is_empty() and all(os.path.isdir(d) for d in slot.paths)
    assert not any(os.path.exists(d) for d in below)


def test_a_slot_still_charged_is_not_claimed(
    caps: CgroupCapabilities,  # noqa: F811
    base_name: str,  # noqa: F811
    procs: Procs,  # noqa: F811
    tmp_path: Path,
) -> None:
    need_memory(caps)
    slot = open_slot(caps, base_name, "slot-job-0")
    assert slot is not None
    marker = tmp_path / "allocated"
    procs.spawn([sys.executable, "-c", HOLD_20M, str(marker)], slot.procs_files())
    wait_for(marker.exists, message="20 MiB allocated")
    assert not claim_slot(slot, LIMIT)  # the executor then discards it for a fresh group
