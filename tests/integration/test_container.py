"""The container user story, run as Docker would: PID 1 of a new pid + mount namespace, in
a 0.5 CPU / 512 MiB cgroup, with ``/sys/fs/cgroup`` read-only inside, and every CLI call
made inside (``docker exec`` = join the cgroups, then ``nsenter -t <init> -p -m``).

The negative control turns the PID-1 liveness fix off (``SKY_MINI_DISABLE=pid1``) and shows
the HEALTHCHECK assertion then fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import SkyMini, marked_pids, pid_alive, wait_for
from tests.integration.test_no_survivors import ORPHANS, ns_init_pid, zombies_under
from tests.integration.test_small_machine import own_v1_dir, remove_cgroup

MiB = 1024 * 1024
QUOTA_US, PERIOD_US = 50_000, 100_000  # Kubernetes `cpu: 500m`
CONTAINER_MEMORY = 512 * MiB
BIG = f"{sys.executable} -c 'x = bytearray(300 * 2**20); print(len(x))'"
# Docker's default: every cgroup mount read-only inside the container's mount namespace.
READ_ONLY_CGROUPS = (
    "for m in $(awk '$5 ~ \"^/sys/fs/cgroup\" {print $5}' /proc/self/mountinfo); do "
    'mount -o remount,bind,ro "$m" || exit 99; done; exec "$@"'
)


@dataclass
class Container:
    sky: SkyMini
    cpu: str
    mem: str
    unshare: subprocess.Popen[bytes] | None = None
    init: int = 0

    def join(self) -> str:
        return f"echo $$ > {self.cpu}/cgroup.procs && echo $$ > {self.mem}/cgroup.procs && "

    def start(self, env: dict[str, str]) -> None:
        script = self.join() + (
            'exec unshare --pid --fork --mount-proc --propagation private sh -c "$0" sh "$@"'
        )
        log = open(os.path.join(os.path.dirname(self.sky.home), "container.log"), "ab")  # noqa: SIM115
        argv = [sys.executable, "-m", "sky_mini", "serve", "--foreground"]
        self.unshare = subprocess.Popen(
            ["sh", "-c", script, READ_ONLY_CGROUPS, *argv], env=env, stdout=log, stderr=log
        )
        self.sky.servers.append(self.unshare)
        self.init = ns_init_pid(self.unshare)
        wait_for(lambda: self.sky.status_ok(1), 60, "the server as PID 1")

    def exec(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``docker exec``: join the container's cgroups and namespaces, then run ``args``."""
        script = self.join() + f'exec nsenter -t {self.init} -p -m "$@"'
        return subprocess.run(
            ["sh", "-c", script, "sh", *args],
            env=env or self.sky.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.exec(sys.executable, "-m", "sky_mini", *args, env=env)

    def launch(self, *args: str) -> int:
        done = self.cli("jobs", "launch", "--async", *args)
        assert done.returncode == 0, done
        return int(done.stdout)

    def record(self, job_id: int) -> dict[str, Any]:
        done = self.cli("jobs", "queue", "--all", "--json")
        assert done.returncode == 0, done
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return next(r for r in rows if r["id"] == job_id)


@pytest.fixture
def container(sky: SkyMini) -> Iterator[Container]:
    cpu_parent, mem_parent = own_v1_dir("cpu"), own_v1_dir("memory")
    tools = all(shutil.which(t) for t in ("unshare", "nsenter", "mount", "awk"))
    if os.geteuid() != 0 or not cpu_parent or not mem_parent or not tools:
        pytest.skip("needs root, writable v1 cpu and memory cgroups, unshare/nsenter/mount")
    name = f"sm-container-{uuid.uuid4().hex[:8]}"
    cpu, mem = os.path.join(cpu_parent, name), os.path.join(mem_parent, name)
    os.mkdir(cpu)
    os.mkdir(mem)
    try:
        for path, value in (
            (f"{cpu}/cpu.cfs_period_us", PERIOD_US),
            (f"{cpu}/cpu.cfs_quota_us", QUOTA_US),
            (f"{mem}/memory.limit_in_bytes", CONTAINER_MEMORY),
        ):
            with open(path, "w") as handle:
                handle.write(str(value))
        yield Container(sky, cpu, mem)
    finally:
        sky.cleanup()  # before the groups go: nothing of this test may still be in them
        remove_cgroup(cpu)
        remove_cgroup(mem)


@pytest.mark.root
def test_the_container_user_story_inside_the_namespaces(sky: SkyMini, container: Container) -> None:
    container.start(sky.env)
    # HEALTHCHECK CMD ["sky-mini", "api", "status"]
    health = container.cli("api", "status")
    assert health.returncode == 0, health
    report = json.loads(container.cli("api", "status", "--json").stdout)
    assert report["pid"] == 1 and report["health"] == "healthy"
    assert report["resources"]["cpus"] == 0.5 and report["resources"]["cpus_source"] == "cgroup"
    assert report["resources"]["memory_bytes"] == CONTAINER_MEMORY
    assert report["pool"]["job_executors"] == 1
    assert "floor(0.5 CPU)" in report["pool"]["explanation"]
    assert "watchdog" in container.cli("api", "status").stdout  # cgroups are read-only here

    # Five jobs with the default CPU request run on the 0.5 CPU box.
    ids = [container.launch("--", "sh", "-c", f"echo {i}") for i in range(5)]
    waited = container.cli("jobs", "wait", *map(str, ids))
    assert waited.returncode == 0, waited
    assert all(container.record(i)["status"] == "SUCCEEDED" for i in ids)
    # An explicit request the box can never give is still refused, with its figure.
    refused = container.cli("jobs", "launch", "--async", "--cpus", "1", "--", "true")
    assert refused.returncode == 2 and "(0.5 CPU)" in refused.stderr, refused

    # One 300 MB allocation on a 64 MiB limit, no writable cgroup: stopped before 80 MiB.
    hog = container.launch("--memory", "64M", "--", "sh", "-c", BIG)
    container.cli("jobs", "wait", str(hog))
    record = container.record(hog)
    assert record["status"] == "KILLED" and record["reason_code"] == "memory_limit", record
    assert "64 MiB" in record["reason"]
    assert 0 < record["peak_memory_bytes"] <= 80 * MiB, record

    # A job whose child calls setsid is fully gone after cancel.
    escapes = container.launch("--", "sh", "-c", "setsid sh -c 'sleep 1000' & sleep 1000")
    marker = f"{sky.key}:"
    wait_for(lambda: len(marked_pids(marker)) >= 3, 30, "the job and its setsid child")
    tree = marked_pids(marker)
    cancelled = container.cli("jobs", "cancel", str(escapes))
    assert cancelled.returncode == 0, cancelled
    wait_for(lambda: not any(pid_alive(p) for p in tree), 15, "the whole job tree gone")
    assert container.record(escapes)["status"] == "CANCELLED"

    # 100 orphaned zombies are reaped by PID 1's tree.
    orphans = container.launch("--", "sh", "-c", ORPHANS)
    assert container.cli("jobs", "wait", str(orphans)).returncode == 0
    wait_for(lambda: not zombies_under(container.init), 15, "no zombies in the container")

    # SIGTERM to PID 1 (docker stop): running job KILLED shutdown, exit 0.
    running = container.launch("--", "sleep", "1000")
    wait_for(lambda: container.record(running)["status"] == "RUNNING", 30, "job running")
    assert container.exec("kill", "-TERM", "1").returncode == 0
    assert container.unshare is not None and container.unshare.wait(60) == 0
    # The container is gone; its home is still readable by the CLI (no server needed).
    listed = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    final = next(r for r in listed if r["id"] == running)
    assert final["status"] == "KILLED" and final["reason_code"] == "shutdown", final


@pytest.mark.root
def test_negative_control_healthcheck_fails_without_the_pid1_fix(
    sky: SkyMini, container: Container
) -> None:
    container.start(sky.env)
    broken = dict(sky.env, SKY_MINI_DISABLE="pid1")
    health = container.cli("api", "status", env=broken)
    assert health.returncode == 4, health  # what issue 11 saw: "pid 1 … dead"
    assert "degraded" in health.stdout
    assert container.cli("api", "status").returncode == 0  # and the fix makes it 0
    container.exec("kill", "-TERM", "1")
    assert container.unshare is not None and container.unshare.wait(60) == 0
    assert not pid_alive(container.init)
