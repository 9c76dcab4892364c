"""``footprint``: the idle server and executors (RSS, CPU)."""

from __future__ import annotations

import time

import psutil

from scripts.benchmarks.harness import (
    Bench,
    Home,
)


def footprint(home: Home) -> tuple[int, int, int]:
    """(processes, total RSS, total USS) of the server and all its descendants."""
    pid = home.server_pid()
    assert pid is not None
    server = psutil.Process(pid)
    procs = [server, *server.children(recursive=True)]
    rss = uss = 0
    for proc in procs:
        info = proc.memory_full_info()
        rss += info.rss
        uss += info.uss
    return len(procs), rss, uss


def bench_footprint(b: Bench) -> None:
    section = "5 idle footprint"
    for label, extra in (
        ("default", {}),
        ("SKY_MINI_CPUS=1 SKY_MINI_MEMORY=2G", {"SKY_MINI_CPUS": "1", "SKY_MINI_MEMORY": "2G"}),
    ):
        with Home("footprint", extra) as home:
            home.start()
            home.wait_idle()
            time.sleep(1.0)  # a benchmark, not a test: let start-up garbage settle
            count, rss, uss = footprint(home)
            executors = len(home.executor_pids())
        b.add(
            section,
            f"{label}: RSS / USS",
            f"{rss / 2**20:.1f} / {uss / 2**20:.1f}",
            "MiB",
            f"server + {executors} executor(s) = {count} processes",
        )
