"""scripts/bench row: the memory watchdog where /sys/fs/cgroup is read-only (Docker's default).

The server runs in a private mount namespace with every cgroup mount remounted read-only,
so memory limits fall back to the watchdog. Each sample is one job that allocates 300 MB in
a single ``bytearray`` under ``--memory 64M``; the figure is the job's recorded
``peak_memory_bytes``, which is the kernel's high-water mark of the reaped processes
(``wait4`` ``ru_maxrss``), not only the watchdog's own samples. The CPU row is the
executor's own CPU time while a limited job idles (the cost of 4 ms sampling).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil

MiB = 1024 * 1024
BIG = f"{sys.executable} -c 'x = bytearray(300 * 2**20); print(len(x))'"
IDLE = f"{sys.executable} -c 'import time; x = bytearray({{}} * 2**20); time.sleep(3)'"
READ_ONLY = (
    "for m in $(awk '$5 ~ \"^/sys/fs/cgroup\" {print $5}' /proc/self/mountinfo); do "
    'mount -o remount,bind,ro "$m" || exit 99; done; exec "$@"'
)


def run(b: Any) -> None:
    """Add the watchdog rows to ``b`` (a ``harness.Bench``)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        b.add(
            "watchdog",
            "peak on a 64 MiB limit, 300 MB in one allocation",
            "skipped",
            "",
            "needs root and unshare (a mount namespace with read-only cgroups)",
        )
        return
    samples = 5 if b.quick else 15
    for label, disable in (("", ""), (" (negative control: 50 ms sampling only)", "memguard")):
        peaks, cpu = measure(samples, disable)
        b.add(
            "watchdog",
            f"peak on a 64 MiB limit, 300 MB in one allocation{label}",
            max(peaks) / MiB,
            "MiB",
            f"max of {samples}; median {statistics.median(peaks) / MiB:.1f} MiB; bound 80 MiB",
        )
        for size, share in cpu.items():
            pace = "50 ms" if disable else ("4 ms" if size * 2 >= 64 else "20 ms")
            b.add(
                "watchdog",
                f"executor CPU, job idling at {size}+ MiB of 64{label}",
                share * 100,
                "%",
                f"of one core; sampling every {pace}",
            )


def measure(samples: int, disable: str) -> tuple[list[int], dict[int, float]]:
    from scripts.benchmarks.harness import Home, wait_for

    extra = {"SKY_MINI_DISABLE": disable} if disable else {}
    with Home("watchdog", extra) as home:
        os.makedirs(home.home, mode=0o700, exist_ok=True)
        log = open(os.path.join(home.dir, "server.out"), "ab")  # noqa: SIM115
        server = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                READ_ONLY,
                "sh",
                sys.executable,
                "-m",
                "sky_mini",
                "serve",
                "--foreground",
                "--executors",
                "1",
            ],
            env=home.env,
            stdout=log,
            stderr=log,
        )
        try:
            wait_for(lambda: home.server_pid() == server.pid, 60, "server in the namespace")
            home.wait_idle()
            peaks = []
            for _ in range(samples):
                job = int(
                    home.sky("jobs", "launch", "--async", "--memory", "64M", "--", "sh", "-c", BIG)
                )
                record = home.wait_terminal(job)
                peaks.append(int(record.get("peak_memory_bytes") or 0))
            cpu = {size: executor_cpu_share(home, size) for size in (4, 40)}
        finally:
            server.terminate()
            server.wait(60)
    return peaks, cpu


def executor_cpu_share(home: Any, size_mib: int) -> float:
    """The executor's CPU share while a 64 MiB-limited job holds ``size_mib`` and sleeps."""
    executor = psutil.Process(home.executor_pids()[0])
    idle = IDLE.format(size_mib)
    job = int(home.sky("jobs", "launch", "--async", "--memory", "64M", "--", "sh", "-c", idle))
    from scripts.benchmarks.harness import wait_for

    wait_for(lambda: home.job(job)["status"] == "RUNNING", 30, "the idle job running")
    start_cpu, start = sum(executor.cpu_times()[:2]), time.monotonic()
    home.wait_terminal(job)
    used = sum(executor.cpu_times()[:2]) - start_cpu
    return used / max(1e-9, time.monotonic() - start)
