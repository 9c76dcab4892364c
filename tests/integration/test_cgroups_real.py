"""Real cgroups: memory limits, OOM counters, tree kills and sweeps with real processes.

Needs root and a writable cgroup (the VMs' hybrid layout: v1 memory + cgroup2 at
/sys/fs/cgroup/unified). Every group lives under a fresh ``sky-mini-test-<hex>`` base below
the test process's own cgroups and is removed, and every process killed, in teardown.
"""

from __future__ import annotations

import dataclasses
import os
import select
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sky_mini.cgroups import (
    CgroupCapabilities,
    JobCgroup,
    classify_memory_death,
    detect_capabilities,
    discard_base,
    join_cgroup_files,
    sweep_base,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.root

MiB = 1024 * 1024
LIMIT = 50 * MiB
TIMEOUT = 20.0

ALLOC_200M = "x = b'x' * (200 << 20)"

# The child forks a grandchild that calls setsid (leaving the child's process group and
# session), writes its pid to a file and sleeps; the child sleeps too.
SETSID_TREE = """
import os, signal, sys
path = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    signal.pause()  # until killed
    os._exit(0)
signal.pause()
"""

HOLD_20M = """
import signal, sys
x = b'x' * (20 << 20)
open(sys.argv[1], "w").close()
signal.pause()
"""


def has_exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited (zombie or reaped)."""
    return bool(select.select([pidfd], [], [], 0)[0])


class Procs:
    """Processes this test started; teardown kills exactly these (pinned by pidfd)."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.pidfds: list[int] = []

    def spawn(self, args: list[str], procs_files: tuple[str, ...]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args,
            start_new_session=True,
            preexec_fn=lambda: join_cgroup_files(procs_files),
            stdin=subprocess.DEVNULL,
        )
        self.popens.append(proc)
        self.pidfds.append(os.pidfd_open(proc.pid))
        return proc

    def spawn_setsid_tree(self, tmp_path: Path, procs_files: tuple[str, ...]) -> tuple[int, int]:
        """Start a child with a setsid grandchild; return (child pid, grandchild pidfd)."""
        pidfile = tmp_path / f"grandchild-{uuid.uuid4().hex[:6]}"
        child = self.spawn([sys.executable, "-c", SETSID_TREE, str(pidfile)], procs_files)
        wait_for(pidfile.exists, message="grandchild pid file")
        grandchild_fd = self.pin(int(pidfile.read_text()))
        return child.pid, grandchild_fd

    def pin(self, pid: int) -> int:
        fd = os.pidfd_open(pid)
        self.pidfds.append(fd)
        return fd

    def cleanup(self) -> None:
        for fd in self.pidfds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass  # already gone
            os.close(fd)
        for proc in self.popens:
            proc.wait(timeout=TIMEOUT)


@pytest.fixture
def caps() -> CgroupCapabilities:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    found = detect_capabilities()
    if not found.can_kill_tree:
        pytest.skip(f"no writable cgroup on this host: {'; '.join(found.warnings)}")
    return found


@pytest.fixture
def base_name(caps: CgroupCapabilities) -> Iterator[str]:
    name = f"sky-mini-test-{uuid.uuid4().hex[:8]}"
    yield name
    discard_base(caps, name)
    for own_root in (caps.v1_memory_root, caps.v2_root):
        if own_root is not None:
            assert not os.path.exists(os.path.join(own_root, name)), "cgroup left behind"


@pytest.fixture
def procs(base_name: str) -> Iterator[Procs]:
    # Depends on base_name so that processes are killed before the groups are removed.
    started = Procs()
    yield started
    started.cleanup()


def need_memory(caps: CgroupCapabilities) -> None:
    if not caps.can_limit_memory:
        pytest.skip(f"no cgroup memory controller on this host: {'; '.join(caps.warnings)}")


def test_memory_limit_kills_and_counts(
    caps: CgroupCapabilities, base_name: str, procs: Procs
) -> None:
    need_memory(caps)
    group = JobCgroup.create(caps, base_name, "job-1", LIMIT)
    assert group.memory_limited and group.oom_kills_since_start() == 0

    proc = procs.spawn([sys.executable, "-c", ALLOC_200M], group.procs_files())

    assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    oom_kills = group.oom_kills_since_start()
    peak = group.peak_memory_bytes()
    assert oom_kills is not None and oom_kills >= 1
    assert peak is not None and peak >= 0.95 * LIMIT
    assert classify_memory_death(LIMIT, peak, oom_kills, signal.SIGKILL) == "memory_limit"


def test_shell_wrapper_exits_zero_yet_oom_is_counted(
    caps: CgroupCapabilities, base_name: str, procs: Procs
) -> None:
    need_memory(caps)
    group = JobCgroup.create(caps, base_name, "job-2", LIMIT)
    script = f"{shlex.quote(sys.executable)} -c {shlex.quote(ALLOC_200M)}; exit 0"

    proc = procs.spawn(["sh", "-c", script], group.procs_files())

    assert proc.wait(timeout=TIMEOUT) == 0  # the exit status lies
    oom_kills = group.oom_kills_since_start()
    assert oom_kills is not None and oom_kills >= 1
    peak = group.peak_memory_bytes()
    assert classify_memory_death(LIMIT, peak, oom_kills, None) == "memory_limit"


def test_peak_and_current_without_oom(
    caps: CgroupCapabilities, base_name: str, procs: Procs, tmp_path: Path
) -> None:
    need_memory(caps)
    group = JobCgroup.create(caps, base_name, "job-3", LIMIT)
    marker = tmp_path / "allocated"

    procs.spawn([sys.executable, "-c", HOLD_20M, str(marker)], group.procs_files())
    wait_for(marker.exists, message="20 MiB allocated")

    current = group.current_memory_bytes()
    peak = group.peak_memory_bytes()
    assert current is not None and 20 * MiB <= current < LIMIT
    assert peak is not None and current <= peak < LIMIT
    assert group.oom_kills_since_start() == 0
    assert classify_memory_death(LIMIT, peak, 0, signal.SIGKILL) is None


@pytest.mark.parametrize("own_limit", [None, 500 * MiB], ids=["no-job-limit", "larger-job-limit"])
def test_oom_from_parent_limit_is_counted_in_job_group_and_classified_oom(
    caps: CgroupCapabilities, base_name: str, procs: Procs, own_limit: int | None
) -> None:
    """A host/container OOM: the limit that bites is an ancestor's, not the job's."""
    if caps.v1_memory_root is None:
        pytest.skip("the parent-limit experiment needs a v1 memory hierarchy")
    v1_only = dataclasses.replace(caps, v2_root=None)
    group = JobCgroup.create(v1_only, base_name, "job-4", own_limit)
    base_dir = os.path.join(caps.v1_memory_root, base_name)
    Path(base_dir, "memory.limit_in_bytes").write_text(str(LIMIT))

    proc = procs.spawn([sys.executable, "-c", ALLOC_200M], group.procs_files())

    assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    oom_kills = group.oom_kills_since_start()
    assert oom_kills is not None and oom_kills >= 1  # counted in the victim's group
    peak = group.peak_memory_bytes()
    assert peak is not None and peak < 0.9 * (own_limit or 2 * LIMIT)
    assert classify_memory_death(own_limit, peak, oom_kills, signal.SIGKILL) == "oom"


@pytest.mark.parametrize("method", ["cgroup.kill", "v1-sigkill-passes"])
def test_kill_removes_tree_with_setsid_grandchild(
    caps: CgroupCapabilities, base_name: str, procs: Procs, tmp_path: Path, method: str
) -> None:
    if method == "cgroup.kill":
        if caps.v2_root is None:
            pytest.skip("no cgroup2 hierarchy with cgroup.kill on this host")
        used = caps
    else:
        if caps.v1_memory_root is None:
            pytest.skip("no v1 memory hierarchy on this host")
        used = dataclasses.replace(caps, v2_root=None)
    group = JobCgroup.create(used, base_name, "job-5", None)
    child_pid, grandchild_fd = procs.spawn_setsid_tree(tmp_path, group.procs_files())
    child = procs.popens[-1]
    assert child_pid in group.pids() and len(group.pids()) >= 2
    assert not group.is_empty()

    group.kill()

    assert child.wait(timeout=TIMEOUT) == -signal.SIGKILL
    wait_for(lambda: has_exited(grandchild_fd), message="setsid grandchild to die")
    wait_for(group.is_empty, message="group to empty")
    group.remove()
    assert not any(os.path.exists(p) for p in group.paths)


def test_negative_control_killpg_leaves_setsid_grandchild_alive(
    caps: CgroupCapabilities, base_name: str, procs: Procs, tmp_path: Path
) -> None:
    """Without the cgroup, a process-group kill misses the setsid grandchild."""
    group = JobCgroup.create(caps, base_name, "job-6", None)
    child_pid, grandchild_fd = procs.spawn_setsid_tree(tmp_path, group.procs_files())
    child = procs.popens[-1]

    os.killpg(child_pid, signal.SIGKILL)

    assert child.wait(timeout=TIMEOUT) == -signal.SIGKILL
    assert not has_exited(grandchild_fd), "setsid grandchild died with its process group"
    assert group.pids(), "grandchild should still be in the job's cgroup"
    group.remove()  # the mechanism under test catches it
    wait_for(lambda: has_exited(grandchild_fd), message="grandchild killed by remove()")


def test_create_replaces_stale_group(
    caps: CgroupCapabilities, base_name: str, procs: Procs, tmp_path: Path
) -> None:
    stale = JobCgroup.create(caps, base_name, "svc-web-1", None)
    _, grandchild_fd = procs.spawn_setsid_tree(tmp_path, stale.procs_files())

    fresh = JobCgroup.create(caps, base_name, "svc-web-1", None)

    wait_for(lambda: has_exited(grandchild_fd), message="stale group's grandchild to die")
    assert fresh.paths == stale.paths and fresh.is_empty() and fresh.pids() == set()


def test_sweep_base_removes_leftovers_and_nothing_else(
    caps: CgroupCapabilities, base_name: str, procs: Procs, tmp_path: Path
) -> None:
    own_root = caps.v1_memory_root or caps.v2_root
    assert own_root is not None
    # Leftovers of "a previous server": two groups with processes in the current base ...
    first = JobCgroup.create(caps, base_name, "job-7", None)
    second = JobCgroup.create(caps, base_name, "svc-db-1", None)
    _, grandchild_fd = procs.spawn_setsid_tree(tmp_path, first.procs_files())
    sleeper = procs.spawn([sys.executable, "-c", "import signal; signal.pause()"], ())
    join_files = second.procs_files()
    second_proc = procs.spawn([sys.executable, "-c", "import signal; signal.pause()"], join_files)
    # ... and one recorded under another base (as if the old server ran in another cgroup).
    other_base = os.path.join(own_root, f"{base_name}-old")
    recorded = os.path.join(other_base, "job-9")
    os.makedirs(recorded)
    # A group that is not ours, passed in by mistake: must survive with its process.
    foreign = os.path.join(own_root, f"plain-{uuid.uuid4().hex[:8]}")
    os.mkdir(foreign)
    try:
        recorded_proc = procs.spawn(
            [sys.executable, "-c", "import signal; signal.pause()"],
            (os.path.join(recorded, "cgroup.procs"),),
        )
        foreign_proc = procs.spawn(
            [sys.executable, "-c", "import signal; signal.pause()"],
            (os.path.join(foreign, "cgroup.procs"),),
        )
        wait_for(lambda: foreign_proc.pid in _procs_in(foreign), message="foreign group joined")

        removed = sweep_base(caps, base_name, extra_dirs=[recorded, foreign])

        expected = set(first.paths) | set(second.paths) | {recorded, other_base}
        assert set(removed) == expected
        assert not any(os.path.exists(p) for p in expected)
        assert os.path.isdir(os.path.join(own_root, base_name))  # the base itself stays
        for proc in (second_proc, recorded_proc):
            assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
        wait_for(lambda: has_exited(grandchild_fd), message="setsid grandchild to die")
        assert foreign_proc.poll() is None and sleeper.poll() is None
        assert foreign_proc.pid in _procs_in(foreign)
    finally:
        procs.cleanup()
        procs.popens.clear()
        procs.pidfds.clear()
        wait_for(lambda: not _procs_in(foreign), message="foreign group to empty")
        os.rmdir(foreign)
        if os.path.isdir(recorded):
            sweep_base(caps, base_name, extra_dirs=[recorded])


def _procs_in(directory: str) -> set[int]:
    return {int(p) for p in Path(directory, "cgroup.procs").read_text().split()}


def test_discard_base_kills_and_removes_a_whole_home(
    caps: CgroupCapabilities, base_name: str, procs: Procs, tmp_path: Path
) -> None:
    """What a SIGKILLed server of a home that never starts again leaves: gone in one call."""
    group = JobCgroup.create(caps, base_name, "job-1", None)
    _, grandchild_fd = procs.spawn_setsid_tree(tmp_path, group.procs_files())
    discard_base(caps, base_name)
    wait_for(lambda: has_exited(grandchild_fd), message="setsid grandchild to die")
    for own_root in (caps.v1_memory_root, caps.v2_root):
        if own_root is not None:
            assert not os.path.exists(os.path.join(own_root, base_name))
