"""Unit tests for sky_mini.cgroups: capability detection on fake sysfs trees, pure helpers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from sky_mini.cgroups import (
    WARN_DISABLED,
    WARN_NO_KILL,
    WARN_NO_MEMORY,
    WARN_V1_KILL,
    CgroupCapabilities,
    JobCgroup,
    _is_sweepable_name,
    _read_keyed,
    classify_memory_death,
    detect_capabilities,
)

MiB = 1024 * 1024

V1_MOUNTS = [
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
    "35 31 0:32 {root} /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
]
V2_MOUNT_UNIFIED = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"
V2_MOUNT_PURE = "41 23 0:38 {root} /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
OTHER_MOUNTS = [
    "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
]


def make_tree(
    tmp_path: Path,
    *,
    cgroup_lines: list[str],
    mount_lines: list[str],
    dirs: dict[str, dict[str, str]],
) -> str:
    """Write a fake /proc/self/{cgroup,mountinfo} and cgroup dirs (path -> files) under tmp."""
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("".join(line + "\n" for line in cgroup_lines))
    (proc / "mountinfo").write_text("".join(line + "\n" for line in mount_lines))
    for directory, files in dirs.items():
        path = tmp_path / directory.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (path / name).write_text(content)
    return str(tmp_path)


def hybrid_tree(tmp_path: Path) -> str:
    """Like these VMs: v1 memory per shell, cgroup2 at /unified with no memory controller."""
    return make_tree(
        tmp_path,
        cgroup_lines=["4:memory:/process_api/abc", "1:cpu:/", "0::/"],
        mount_lines=OTHER_MOUNTS + [m.format(root="/") for m in V1_MOUNTS] + [V2_MOUNT_UNIFIED],
        dirs={
            "/sys/fs/cgroup/memory/process_api/abc": {"cgroup.procs": "", "memory.oom_control": ""},
            "/sys/fs/cgroup/unified": {"cgroup.procs": "", "cgroup.subtree_control": ""},
            "/sys/fs/cgroup/unified/other": {"cgroup.kill": "", "cgroup.procs": ""},
        },
    )


def test_hybrid_has_v1_memory_and_v2_kill(tmp_path: Path) -> None:
    root = hybrid_tree(tmp_path)
    caps = detect_capabilities(root=root)
    assert caps.v1_memory_root == f"{root}/sys/fs/cgroup/memory/process_api/abc"
    assert caps.v2_root == f"{root}/sys/fs/cgroup/unified"
    assert caps.v2_memory is False
    assert caps.can_limit_memory and caps.can_kill_tree
    assert caps.warnings == ()
    assert caps.describe()["memory_limit_method"] == "cgroup v1 memory.limit_in_bytes"
    assert caps.describe()["kill_method"] == "cgroup.kill"


def test_v1_only_warns_that_kill_is_pass_by_pass(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        cgroup_lines=["5:memory:/user/1000", "3:cpu,cpuacct:/user/1000"],
        mount_lines=OTHER_MOUNTS + [m.format(root="/") for m in V1_MOUNTS],
        dirs={"/sys/fs/cgroup/memory/user/1000": {"cgroup.procs": ""}},
    )
    caps = detect_capabilities(root=root)
    assert caps.v1_memory_root == f"{root}/sys/fs/cgroup/memory/user/1000"
    assert caps.v2_root is None
    assert caps.can_limit_memory and caps.can_kill_tree
    assert caps.warnings == (WARN_V1_KILL,)
    assert caps.describe()["kill_method"] == "sigkill cgroup.procs"


def test_v2_only_with_memory_delegated(tmp_path: Path) -> None:
    own = "/user.slice/user-0.slice/session-1.scope"
    root = make_tree(
        tmp_path,
        cgroup_lines=[f"0::{own}"],
        mount_lines=OTHER_MOUNTS[:1] + [V2_MOUNT_PURE.format(root="/")],
        dirs={
            f"/sys/fs/cgroup{own}": {
                "cgroup.kill": "",
                "cgroup.procs": "",
                "cgroup.controllers": "cpu io memory pids",
                "cgroup.subtree_control": "memory pids\n",
            }
        },
    )
    caps = detect_capabilities(root=root)
    assert caps.v1_memory_root is None
    assert caps.v2_root == f"{root}/sys/fs/cgroup{own}"
    assert caps.v2_memory is True
    assert caps.can_limit_memory and caps.can_kill_tree
    assert caps.warnings == ()
    assert caps.describe()["memory_limit_method"] == "cgroup v2 memory.max"


def test_v2_without_memory_delegation_warns_about_memory(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        cgroup_lines=["0::/svc"],
        mount_lines=[V2_MOUNT_PURE.format(root="/")],
        dirs={
            "/sys/fs/cgroup/svc": {
                "cgroup.kill": "",
                "cgroup.controllers": "cpu memory",
                "cgroup.subtree_control": "",
            }
        },
    )
    caps = detect_capabilities(root=root)
    assert caps.v2_root is not None and not caps.v2_memory
    assert not caps.can_limit_memory and caps.can_kill_tree
    assert caps.warnings == (WARN_NO_MEMORY,)


def test_mount_root_field_is_respected(tmp_path: Path) -> None:
    """A container without a cgroup namespace sees /docker/<id> mounted at the mount point."""
    root = make_tree(
        tmp_path,
        cgroup_lines=["4:memory:/docker/c0ffee/inner", "0::/docker/c0ffee"],
        mount_lines=[m.format(root="/docker/c0ffee") for m in V1_MOUNTS]
        + [V2_MOUNT_PURE.format(root="/docker/c0ffee")],
        dirs={
            "/sys/fs/cgroup/memory/inner": {"cgroup.procs": ""},
            "/sys/fs/cgroup": {"cgroup.kill": "", "cgroup.subtree_control": ""},
        },
    )
    caps = detect_capabilities(root=root)
    assert caps.v1_memory_root == f"{root}/sys/fs/cgroup/memory/inner"
    assert caps.v2_root == f"{root}/sys/fs/cgroup"


def test_own_path_outside_mount_root_is_unavailable(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        cgroup_lines=["4:memory:/elsewhere", "0::/elsewhere"],
        mount_lines=[m.format(root="/docker/c0ffee") for m in V1_MOUNTS]
        + [V2_MOUNT_PURE.format(root="/docker/c0ffee")],
        dirs={"/sys/fs/cgroup/memory": {}, "/sys/fs/cgroup/elsewhere": {"cgroup.kill": ""}},
    )
    caps = detect_capabilities(root=root)
    assert caps.v1_memory_root is None and caps.v2_root is None
    assert caps.warnings == (WARN_NO_MEMORY, WARN_NO_KILL)


def test_escaped_mount_point(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        cgroup_lines=["4:memory:/a"],
        mount_lines=["35 31 0:32 / /cg\\040mem rw - cgroup cgroup rw,memory"],
        dirs={"/cg mem/a": {"cgroup.procs": ""}},
    )
    assert detect_capabilities(root=root).v1_memory_root == f"{root}/cg mem/a"


def test_v2_group_dir_missing_is_unavailable(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        cgroup_lines=["0::/gone"],
        mount_lines=[V2_MOUNT_PURE.format(root="/")],
        dirs={"/sys/fs/cgroup": {}},
    )
    caps = detect_capabilities(root=root)
    assert caps.v2_root is None


def test_v2_without_cgroup_kill_is_unavailable(tmp_path: Path) -> None:
    """Kernels before 5.14 have no cgroup.kill: the v2 group cannot kill a tree at once."""
    root = make_tree(
        tmp_path,
        cgroup_lines=["0::/svc"],
        mount_lines=[V2_MOUNT_PURE.format(root="/")],
        dirs={"/sys/fs/cgroup/svc": {"cgroup.procs": "", "cgroup.subtree_control": "memory"}},
    )
    caps = detect_capabilities(root=root)
    assert caps.v2_root is None and not caps.v2_memory


def test_no_cgroups_at_all_warns_twice(tmp_path: Path) -> None:
    root = make_tree(tmp_path, cgroup_lines=[], mount_lines=OTHER_MOUNTS, dirs={})
    caps = detect_capabilities(root=root)
    assert caps == CgroupCapabilities(None, None, False, (WARN_NO_MEMORY, WARN_NO_KILL))
    assert not caps.can_limit_memory and not caps.can_kill_tree


def test_unreadable_proc_is_no_cgroups(tmp_path: Path) -> None:
    caps = detect_capabilities(root=str(tmp_path))
    assert caps.v1_memory_root is None and caps.v2_root is None
    assert WARN_NO_MEMORY in caps.warnings


def test_disabled(tmp_path: Path) -> None:
    caps = detect_capabilities(root=hybrid_tree(tmp_path), disabled=True)
    assert caps == CgroupCapabilities(None, None, False, (WARN_DISABLED,))
    assert caps.warnings == ("cgroups disabled by SKY_MINI_DISABLE",)


def test_describe_is_json_ready(tmp_path: Path) -> None:
    caps = detect_capabilities(root=hybrid_tree(tmp_path))
    data = json.loads(json.dumps(caps.describe()))
    assert data["can_limit_memory"] is True
    assert data["warnings"] == []


LIMIT = 50 * MiB


@pytest.mark.parametrize(
    ("limit", "peak", "oom_kills", "sig", "expected"),
    [
        # the job's own limit, recorded by the group's counter
        (LIMIT, LIMIT, 1, signal.SIGKILL, "memory_limit"),
        (LIMIT, LIMIT, 1, None, "memory_limit"),  # sh wrapper exited 0
        (LIMIT, None, 2, None, "memory_limit"),  # peak unknown: trust the counter
        # counter recorded a kill but no job limit: host/container OOM
        (None, 3 * LIMIT, 1, signal.SIGKILL, "oom"),
        (None, None, 1, None, "oom"),
        # own limit far away: an ancestor's limit or the host did it (counted in victim group)
        (10 * LIMIT, LIMIT, 1, signal.SIGKILL, "oom"),
        # no counter (no cgroup): SIGKILL at the limit is the limit
        (LIMIT, LIMIT, None, signal.SIGKILL, "memory_limit"),
        (LIMIT, int(LIMIT * 0.995), None, signal.SIGKILL, "memory_limit"),
        (LIMIT, LIMIT // 2, None, signal.SIGKILL, None),
        (LIMIT, LIMIT, None, signal.SIGTERM, None),
        (LIMIT, LIMIT, None, None, None),
        (None, LIMIT, None, signal.SIGKILL, None),
        # a known zero counter is trusted: someone else's kill -9 at the limit
        (LIMIT, LIMIT, 0, signal.SIGKILL, None),
        (LIMIT, LIMIT // 2, 0, None, None),
        (None, None, None, None, None),
        (None, None, 0, signal.SIGKILL, None),
    ],
)
def test_classify_memory_death(
    limit: int | None,
    peak: int | None,
    oom_kills: int | None,
    sig: int | None,
    expected: str | None,
) -> None:
    assert classify_memory_death(limit, peak, oom_kills, sig) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/sys/fs/cgroup/memory/x/sky-mini-3f2a", True),
        ("/sys/fs/cgroup/memory/x/sky-mini-3f2a/job-1", True),
        ("/sys/fs/cgroup/unified/sky-mini-3f2a/svc-web-1/sub", True),
        ("/sys/fs/cgroup/memory/x", False),
        ("/sys/fs/cgroup/memory/x/job-1", False),
        ("/sys/fs/cgroup/memory/x/sky-mini-3f2a/../other", False),
        ("sky-mini-3f2a/job-1", False),  # relative
        ("/sys/fs/cgroup/memory/x/not-sky-mini-1", False),
    ],
)
def test_only_sky_mini_dirs_are_sweepable(path: str, expected: bool) -> None:
    assert _is_sweepable_name(path) is expected


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_bad_group_names_rejected(name: str) -> None:
    caps = CgroupCapabilities(None, None, False)
    with pytest.raises(ValueError):
        JobCgroup.create(caps, "sky-mini-x", name, None)


def test_base_name_must_have_prefix() -> None:
    with pytest.raises(ValueError, match="sky-mini-"):
        JobCgroup.create(CgroupCapabilities(None, None, False), "mine", "job-1", None)


def test_job_cgroup_without_capabilities_degrades(tmp_path: Path) -> None:
    group = JobCgroup.create(CgroupCapabilities(None, None, False), "sky-mini-x", "job-1", LIMIT)
    assert group.paths == () and group.procs_files() == ()
    assert not group.memory_limited
    assert any("RSS watchdog" in w for w in group.warnings)
    assert group.oom_kill_count() is None and group.oom_kills_since_start() is None
    assert group.peak_memory_bytes() is None and group.current_memory_bytes() is None
    assert group.pids() == set() and group.is_empty()
    group.kill()
    group.remove()


def test_read_keyed(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n")
    assert _read_keyed(str(events), "oom_kill") == 2
    assert _read_keyed(str(events), "oom") == 3
    assert _read_keyed(str(events), "missing") is None
    assert _read_keyed(str(tmp_path / "nope"), "oom_kill") is None
