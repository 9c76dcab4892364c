"""Right-sized on a 1 CPU / 2 GB box: a real server inside real v1 cgroups plus taskset."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import SkyMini, wait_for

GiB = 1024**3


def own_v1_dir(controller: str) -> str | None:
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                directory = f"/sys/fs/cgroup/{controller}{path}"
                return directory if os.access(directory, os.W_OK) else None
    return None


def remove_cgroup(path: str) -> None:
    def gone() -> bool:
        try:
            with open(os.path.join(path, "cgroup.procs")) as handle:
                pids = [int(p) for p in handle.read().split()]
        except FileNotFoundError:
            return True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Every group below the box, deepest first (an idle server keeps its executors'
        # slot groups: <box>/sky-mini-<key>/slot-job-N).
        for directory, _, _ in os.walk(path, topdown=False):
            if directory != path:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
        with contextlib.suppress(OSError):
            os.rmdir(path)
        return not os.path.exists(path)

    wait_for(gone, 10, f"{path} removed")


@pytest.fixture
def small_box() -> Iterator[tuple[str, str]]:
    """A v1 cpu cgroup with a 1-CPU quota and an (unlimited) v1 memory cgroup."""
    cpu_parent, mem_parent = own_v1_dir("cpu"), own_v1_dir("memory")
    if os.geteuid() != 0 or not cpu_parent or not mem_parent or not shutil.which("taskset"):
        pytest.skip("needs root, writable v1 cpu and memory cgroups, and taskset")
    name = f"smtest-box-{uuid.uuid4().hex[:8]}"
    cpu, mem = os.path.join(cpu_parent, name), os.path.join(mem_parent, name)
    os.mkdir(cpu)
    os.mkdir(mem)
    try:
        with open(os.path.join(cpu, "cpu.cfs_period_us"), "w") as handle:
            handle.write("100000")
        with open(os.path.join(cpu, "cpu.cfs_quota_us"), "w") as handle:
            handle.write("100000")
        yield cpu, mem
    finally:
        remove_cgroup(cpu)
        remove_cgroup(mem)


def serve_in_box(sky: SkyMini, cpu: str, mem: str, memory: int) -> subprocess.Popen[bytes]:
    with open(os.path.join(mem, "memory.limit_in_bytes"), "w") as handle:
        handle.write(str(memory))
    script = (
        f'echo $$ > {cpu}/cgroup.procs && echo $$ > {mem}/cgroup.procs && exec taskset -c 0 "$@"'
    )
    log = open(os.path.join(os.path.dirname(sky.home), "box.log"), "ab")  # noqa: SIM115
    server = subprocess.Popen(
        ["sh", "-c", script, "sh", sys.executable, "-m", "sky_mini", "serve", "--foreground"],
        env=sky.env,
        stdout=log,
        stderr=log,
    )
    sky.servers.append(server)
    wait_for(lambda: sky.status_ok(server.pid), message="server healthy in the box")
    return server


@pytest.mark.root
@pytest.mark.parametrize(("memory", "warns"), [(2 * GiB, False), (GiB, True), (GiB // 2, True)])
def test_small_box_starts_every_component_and_runs_jobs(
    sky: SkyMini, small_box: tuple[str, str], memory: int, warns: bool
) -> None:
    cpu, mem = small_box
    serve_in_box(sky, cpu, mem, memory)
    status = sky.run("api", "status", "--json")
    assert status.code == 0, status
    report = status.json()
    resources = report["resources"]
    assert resources["cpus"] == 1.0 and resources["cpus_source"] == "cgroup"
    assert resources["memory_bytes"] == memory and resources["memory_source"] == "cgroup"
    assert report["pool"]["job_executors"] >= 1
    assert report["health"] == "healthy"
    assert all(c["state"] != "dead" for c in report["components"])
    assert bool(report["pool"]["warning"]) == warns
    if warns:
        with open(os.path.join(sky.home, "server.log")) as handle:
            assert "low-resource mode" in handle.read()
    ids = [
        int(sky.run("jobs", "launch", "--async", "--", "sh", "-c", f"echo {i}", check=True).out)
        for i in range(10)
    ]
    assert sky.run("jobs", "wait", *map(str, ids), timeout=120).code == 0
