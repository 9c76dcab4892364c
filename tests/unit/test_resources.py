"""Resource detection against fake /proc and /sys trees, and the executor pool formula."""

from __future__ import annotations

from pathlib import Path

import pytest

from sky_mini.errors import UsageError
from sky_mini.resources import (
    MAX_JOB_EXECUTORS,
    MEMORY_PER_EXECUTOR_BYTES,
    DetectedResources,
    detect_resources,
    size_pool,
)

GiB = 1024**3
MiB = 1024**2
HOST_CPUS = 8
HOST_MEMORY = 64 * GiB
V1_UNLIMITED = "9223372036854771712"

V1_MOUNTS = [
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
    "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct",
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
]
V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate"
HYBRID_V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"


# --- fake tree helpers --------------------------------------------------------------------


def write_proc_cgroup(root: Path, lines: list[str]) -> None:
    """Write <root>/proc/self/cgroup."""
    path = root / "proc/self/cgroup"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_mountinfo(root: Path, lines: list[str]) -> None:
    """Write <root>/proc/self/mountinfo, after a couple of unrelated mounts."""
    path = root / "proc/self/mountinfo"
    path.parent.mkdir(parents=True, exist_ok=True)
    base = [
        "22 1 254:1 / / rw,relatime - ext4 /dev/vda rw",
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
    ]
    path.write_text("\n".join(base + lines) + "\n")


def write_cgroup_file(root: Path, directory: str, name: str, value: str) -> None:
    """Write one cgroup control file, e.g. sys/fs/cgroup/cpu/x/cpu.cfs_quota_us."""
    path = root / directory.lstrip("/") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


def v1_tree(root: Path, path: str = "/job") -> None:
    """A v1-only machine with the process at ``path`` in both cpu and memory hierarchies."""
    write_proc_cgroup(root, [f"4:memory:{path}", "2:cpuacct:/", f"1:cpu:{path}"])
    write_mountinfo(root, V1_MOUNTS)


def v2_tree(root: Path, path: str = "/job") -> None:
    """A unified (v2-only) machine with the process at ``path``."""
    write_proc_cgroup(root, [f"0::{path}"])
    write_mountinfo(root, [V2_MOUNT])


def detect(root: Path, **kwargs: object) -> DetectedResources:
    """detect_resources against ``root`` with an 8-CPU / 64 GiB host and a full mask."""
    defaults: dict[str, object] = {
        "env": {},
        "root": str(root),
        "affinity": lambda: set(range(HOST_CPUS)),
        "host_cpus": lambda: HOST_CPUS,
        "host_memory": lambda: HOST_MEMORY,
    }
    defaults.update(kwargs)
    return detect_resources(**defaults)  # type: ignore[arg-type]


# --- cgroup v1 / v2 -----------------------------------------------------------------------


def test_v1_quota_and_memory_limit(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/job", "cpu.cfs_quota_us", "100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/job", "cpu.cfs_period_us", "100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/memory/job", "memory.limit_in_bytes", str(2 * GiB))
    write_cgroup_file(tmp_path, "sys/fs/cgroup/memory", "memory.limit_in_bytes", V1_UNLIMITED)

    found = detect(tmp_path)

    assert (found.cpus, found.cpus_source) == (1.0, "cgroup")
    assert "cpu.cfs_quota_us=100000/cfs_period_us=100000" in found.cpus_detail
    assert found.cpus_detail.endswith("sys/fs/cgroup/cpu/job")
    assert (found.memory_bytes, found.memory_source) == (2 * GiB, "cgroup")
    assert "memory.limit_in_bytes" in found.memory_detail


def test_v1_unlimited_quota_and_memory_fall_back_to_host(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/job", "cpu.cfs_quota_us", "-1")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/job", "cpu.cfs_period_us", "100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/memory/job", "memory.limit_in_bytes", V1_UNLIMITED)

    found = detect(tmp_path)

    assert (found.cpus, found.cpus_source) == (8.0, "host")
    assert (found.memory_bytes, found.memory_source) == (HOST_MEMORY, "host")


def test_v1_limit_at_or_above_host_memory_counts_as_host(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    write_cgroup_file(
        tmp_path, "sys/fs/cgroup/memory/job", "memory.limit_in_bytes", str(HOST_MEMORY + 1)
    )

    found = detect(tmp_path)

    assert (found.memory_bytes, found.memory_source) == (HOST_MEMORY, "host")


def test_v2_fractional_quota_and_memory_max(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/job", "cpu.max", "50000 100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/job", "memory.max", str(GiB))

    found = detect(tmp_path)

    assert (found.cpus, found.cpus_source) == (0.5, "cgroup")
    assert "cpu.max=50000 100000" in found.cpus_detail
    assert (found.memory_bytes, found.memory_source) == (GiB, "cgroup")


def test_v2_max_means_unlimited(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/job", "cpu.max", "max 100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/job", "memory.max", "max")

    found = detect(tmp_path)

    assert (found.cpus, found.cpus_source) == (8.0, "host")
    assert (found.memory_bytes, found.memory_source) == (HOST_MEMORY, "host")


def test_v2_parent_tighter_than_child(tmp_path: Path) -> None:
    v2_tree(tmp_path, "/outer/inner")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/outer", "cpu.max", "100000 100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/outer", "memory.max", str(512 * MiB))
    write_cgroup_file(tmp_path, "sys/fs/cgroup/outer/inner", "cpu.max", "max 100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/outer/inner", "memory.max", str(4 * GiB))

    found = detect(tmp_path)

    assert found.cpus == 1.0
    assert found.cpus_detail.endswith("sys/fs/cgroup/outer")
    assert found.memory_bytes == 512 * MiB
    assert found.memory_detail.endswith("sys/fs/cgroup/outer")


def test_v1_child_tighter_than_parent(tmp_path: Path) -> None:
    v1_tree(tmp_path, "/outer/inner")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/outer", "cpu.cfs_quota_us", "400000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/outer", "cpu.cfs_period_us", "100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/outer/inner", "cpu.cfs_quota_us", "150000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/outer/inner", "cpu.cfs_period_us", "100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/memory/outer", "memory.limit_in_bytes", str(8 * GiB))
    write_cgroup_file(
        tmp_path, "sys/fs/cgroup/memory/outer/inner", "memory.limit_in_bytes", str(3 * GiB)
    )

    found = detect(tmp_path)

    assert (found.cpus, found.cpus_source) == (1.5, "cgroup")
    assert found.cpus_detail.endswith("sys/fs/cgroup/cpu/outer/inner")
    assert found.memory_bytes == 3 * GiB


def test_container_mount_root_is_stripped_from_the_process_path(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: /proc/self/cgroup shows the host path, and the
    # mounted subtree (mountinfo field 4) is that same path, mounted at /sys/fs/cgroup/<ctrl>.
    container = "/docker/abc123"
    write_proc_cgroup(tmp_path, [f"4:memory:{container}", f"1:cpu,cpuacct:{container}"])
    write_mountinfo(
        tmp_path,
        [
            f"40 31 0:29 {container} /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct",
            f"41 31 0:32 {container} /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory",
        ],
    )
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu,cpuacct", "cpu.cfs_quota_us", "200000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu,cpuacct", "cpu.cfs_period_us", "100000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/memory", "memory.limit_in_bytes", str(GiB))
    # Decoys at the path a naive join would read: they must not be used.
    decoy = "sys/fs/cgroup/memory/docker/abc123"
    write_cgroup_file(tmp_path, decoy, "memory.limit_in_bytes", str(64 * MiB))

    found = detect(tmp_path)

    assert (found.cpus, found.cpus_source) == (2.0, "cgroup")
    assert (found.memory_bytes, found.memory_source) == (GiB, "cgroup")


def test_container_v2_subtree_with_nested_process(tmp_path: Path) -> None:
    write_proc_cgroup(tmp_path, ["0::/pod/ctr/app"])
    write_mountinfo(tmp_path, ["30 23 0:26 /pod /sys/fs/cgroup rw - cgroup2 cgroup2 rw"])
    write_cgroup_file(tmp_path, "sys/fs/cgroup", "memory.max", str(GiB))
    write_cgroup_file(tmp_path, "sys/fs/cgroup/ctr/app", "memory.max", str(2 * GiB))

    found = detect(tmp_path)

    assert found.memory_bytes == GiB
    assert found.memory_detail.endswith("sys/fs/cgroup")


def test_hybrid_uses_v1_when_cgroup2_has_no_controllers(tmp_path: Path) -> None:
    # This machine's layout: v1 controllers, cgroup2 at /unified without cpu/memory.
    write_proc_cgroup(
        tmp_path, ["4:memory:/process_api/abc", "2:cpuacct:/", "1:cpu:/process_api/abc", "0::/"]
    )
    write_mountinfo(tmp_path, [*V1_MOUNTS, HYBRID_V2_MOUNT])
    (tmp_path / "sys/fs/cgroup/unified").mkdir(parents=True)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/unified", "cgroup.procs", "1")
    base = "sys/fs/cgroup/cpu/process_api/abc"
    write_cgroup_file(tmp_path, base, "cpu.cfs_quota_us", "100000")
    write_cgroup_file(tmp_path, base, "cpu.cfs_period_us", "100000")
    base = "sys/fs/cgroup/memory/process_api/abc"
    write_cgroup_file(tmp_path, base, "memory.limit_in_bytes", str(2 * GiB))

    found = detect(tmp_path)

    assert (found.cpus, found.cpus_source) == (1.0, "cgroup")
    assert (found.memory_bytes, found.memory_source) == (2 * GiB, "cgroup")


def test_missing_files_mean_host(tmp_path: Path) -> None:
    found = detect(tmp_path)  # no proc, no sys at all

    assert (found.cpus, found.cpus_source) == (8.0, "host")
    assert (found.memory_bytes, found.memory_source) == (HOST_MEMORY, "host")


def test_garbage_cgroup_files_are_ignored(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/job", "cpu.max", "lots")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/job", "memory.max", "")
    (tmp_path / "proc/self/mountinfo").write_text("garbage\n" + V2_MOUNT + "\n")

    found = detect(tmp_path)

    assert (found.cpus_source, found.memory_source) == ("host", "host")


def test_mounted_but_process_not_listed_means_host(tmp_path: Path) -> None:
    write_proc_cgroup(tmp_path, ["9:name=systemd:/"])
    write_mountinfo(tmp_path, V1_MOUNTS)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu", "cpu.cfs_quota_us", "50000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu", "cpu.cfs_period_us", "100000")

    assert detect(tmp_path).cpus_source == "host"


# --- affinity -----------------------------------------------------------------------------


def test_affinity_smaller_than_host(tmp_path: Path) -> None:
    found = detect(tmp_path, affinity=lambda: {0, 1})

    assert (found.cpus, found.cpus_source) == (2.0, "affinity")
    assert "2 of 8" in found.cpus_detail


def test_affinity_tighter_than_quota(tmp_path: Path) -> None:
    v1_tree(tmp_path)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/job", "cpu.cfs_quota_us", "400000")
    write_cgroup_file(tmp_path, "sys/fs/cgroup/cpu/job", "cpu.cfs_period_us", "100000")

    found = detect(tmp_path, affinity=lambda: {3})

    assert (found.cpus, found.cpus_source) == (1.0, "affinity")


def test_quota_tighter_than_affinity(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/job", "cpu.max", "150000 100000")

    found = detect(tmp_path, affinity=lambda: {0, 1, 2, 3})

    assert (found.cpus, found.cpus_source) == (1.5, "cgroup")


def test_quota_above_host_is_host(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    write_cgroup_file(tmp_path, "sys/fs/cgroup/job", "cpu.max", "1600000 100000")

    found = detect(tmp_path)

    assert (found.cpus, found.cpus_source) == (8.0, "host")


# --- overrides ----------------------------------------------------------------------------


def limited_v2(root: Path) -> None:
    v2_tree(root)
    write_cgroup_file(root, "sys/fs/cgroup/job", "cpu.max", "50000 100000")
    write_cgroup_file(root, "sys/fs/cgroup/job", "memory.max", str(GiB))


def test_env_overrides_beat_config_cgroup_and_host(tmp_path: Path) -> None:
    limited_v2(tmp_path)
    env = {"SKY_MINI_CPUS": "3", "SKY_MINI_MEMORY": "512M"}

    found = detect(
        tmp_path,
        env=env,
        config_cpus=2.0,
        config_memory_bytes=4 * GiB,
        affinity=lambda: {0},
        host_memory=lambda: pytest.fail("host memory is not needed with an override"),
    )

    assert (found.cpus, found.cpus_source) == (3.0, "override")
    assert (found.memory_bytes, found.memory_source) == (512 * MiB, "override")
    assert "SKY_MINI_CPUS" in found.cpus_detail
    assert "SKY_MINI_MEMORY=512M" in found.memory_detail


def test_config_beats_cgroup(tmp_path: Path) -> None:
    limited_v2(tmp_path)

    found = detect(tmp_path, config_cpus=2.0, config_memory_bytes=4 * GiB)

    assert (found.cpus, found.cpus_source) == (2.0, "config")
    assert (found.memory_bytes, found.memory_source) == (4 * GiB, "config")


def test_empty_env_counts_as_unset(tmp_path: Path) -> None:
    found = detect(tmp_path, env={"SKY_MINI_CPUS": "", "SKY_MINI_MEMORY": " "})

    assert (found.cpus_source, found.memory_source) == ("host", "host")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SKY_MINI_CPUS", "lots"),
        ("SKY_MINI_CPUS", "0"),
        ("SKY_MINI_CPUS", "-1"),
        ("SKY_MINI_CPUS", "nan"),
        ("SKY_MINI_CPUS", "inf"),
        ("SKY_MINI_MEMORY", "lots"),
        ("SKY_MINI_MEMORY", "0"),
        ("SKY_MINI_MEMORY", "-2G"),
    ],
)
def test_invalid_env_raises_usage_error(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(UsageError) as caught:
        detect(tmp_path, env={name: value})

    message = caught.value.message
    assert name in message
    assert repr(value) in message
    assert "use e.g." in message


@pytest.mark.parametrize(("cpus", "memory"), [(0.0, None), (-1.0, None), (None, 0)])
def test_invalid_config_raises_usage_error(
    tmp_path: Path, cpus: float | None, memory: int | None
) -> None:
    with pytest.raises(UsageError, match="resources"):
        detect(tmp_path, config_cpus=cpus, config_memory_bytes=memory)


def test_to_json_has_every_field(tmp_path: Path) -> None:
    data = detect(tmp_path).to_json()

    assert set(data) == {
        "cpus",
        "cpus_source",
        "cpus_detail",
        "memory_bytes",
        "memory_source",
        "memory_detail",
    }


def test_real_machine_is_sane() -> None:
    found = detect_resources()

    assert found.cpus > 0
    assert found.memory_bytes > 0
    assert found.cpus_source in {"override", "config", "cgroup", "affinity", "host"}
    assert found.memory_source in {"override", "config", "cgroup", "host"}
    assert found.cpus_detail and found.memory_detail
    assert size_pool(found.cpus, found.memory_bytes).job_executors >= 1


# --- pool sizing --------------------------------------------------------------------------

MEMORIES = [0.5, 1, 2, 4, 64]  # GiB
# Rows: cpus; columns: memory as in MEMORIES. Memory allows 4 * GiB - 1 executors.
EXPECTED = {
    0.5: [1, 1, 1, 1, 1],
    1.0: [1, 1, 1, 1, 1],
    2.0: [1, 2, 2, 2, 2],
    4.0: [1, 3, 4, 4, 4],
    16.0: [1, 3, 7, 15, 16],
}
TABLE = [
    (cpus, gib, counts[column])
    for cpus, counts in EXPECTED.items()
    for column, gib in enumerate(MEMORIES)
]


@pytest.mark.parametrize(("cpus", "gib", "expected"), TABLE)
def test_pool_size_table(cpus: float, gib: float, expected: int) -> None:
    pool = size_pool(cpus, int(gib * GiB))

    assert pool.job_executors == expected
    assert pool.job_executors >= 1
    assert pool.explanation.startswith(f"{expected} job executor")
    assert pool.low_resource == (cpus < 1 or gib < 2)
    assert (pool.warning is not None) == pool.low_resource


def test_pool_explanation_shows_the_formula() -> None:
    pool = size_pool(1.0, 2 * GiB)

    assert pool.explanation == (
        "1 job executor = max(1, min(floor(1 CPU), floor((2.0 GiB - 256 MiB reserve) / 256 MiB)))"
    )
    assert pool.usable_memory_bytes == 2 * GiB - 256 * MiB


def test_pool_is_capped() -> None:
    pool = size_pool(128.0, 1024 * GiB)

    assert pool.job_executors == MAX_JOB_EXECUTORS
    assert "capped at 64" in pool.explanation


def test_low_resource_warning_has_the_numbers() -> None:
    pool = size_pool(0.5, 512 * MiB)

    assert pool.low_resource
    assert pool.job_executors == 1
    assert pool.warning == (
        "low-resource mode: 0.5 CPU / 512 MiB is below the recommended 1 CPU / 2.0 GiB; "
        "running 1 job executor"
    )


def test_tiny_memory_keeps_usable_memory_positive() -> None:
    pool = size_pool(1.0, 128 * MiB)

    assert pool.job_executors == 1
    assert pool.usable_memory_bytes == MEMORY_PER_EXECUTOR_BYTES


def test_override_wins() -> None:
    pool = size_pool(0.5, 512 * MiB, override=3)

    assert pool.job_executors == 3
    assert pool.explanation == "3 job executors (set by --executors)"
    assert pool.low_resource
    assert pool.warning is not None and pool.warning.endswith("running 3 job executors")


def test_override_does_not_warn_on_a_big_machine() -> None:
    pool = size_pool(4.0, 8 * GiB, override=1)

    assert (pool.job_executors, pool.low_resource, pool.warning) == (1, False, None)


@pytest.mark.parametrize("override", [0, -1])
def test_override_below_one_is_a_usage_error(override: int) -> None:
    with pytest.raises(UsageError, match="--executors"):
        size_pool(2.0, 4 * GiB, override=override)


def test_pool_to_json() -> None:
    data = size_pool(2.0, 4 * GiB).to_json()

    assert data["job_executors"] == 2
    assert data["warning"] is None
