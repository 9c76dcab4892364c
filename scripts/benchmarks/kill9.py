"""``kill9``: how fast everything is gone after ``kill -9`` of the server."""

from __future__ import annotations

import os
import signal
import time

from scripts.benchmarks.harness import (
    Bench,
    Home,
    wait_for,
)
from sky_mini.procs import find_marked_processes


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill9_once(home: Home) -> tuple[float, int]:
    """SIGKILL a busy server; (seconds until its last descendant is gone, processes watched)."""
    home.start("--executors", "2")
    home.wait_idle()
    # A job with a child, and a grandchild that escaped with setsid.
    script = "setsid sleep 1000 & sleep 1000"
    home.sky("jobs", "launch", "--async", "--", "sh", "-c", script)
    prefix = [f"{home.key}:"]
    wait_for(lambda: len(find_marked_processes(prefix)) >= 3, 60, "the job's process tree")
    executors = home.executor_pids()
    server = home.server_pid()
    assert server is not None
    watched = len(find_marked_processes(prefix)) + len(executors)

    def gone() -> bool:
        return not find_marked_processes(prefix) and not any(alive(p) for p in executors)

    start = time.perf_counter()
    os.kill(server, signal.SIGKILL)
    wait_for(gone, 30, "every descendant to die", poll=0.001)
    return time.perf_counter() - start, watched


def bench_kill9(b: Bench) -> None:
    section = "7 kill -9 server"
    results = []
    watched = 0
    for _ in range(1 if b.quick else 3):
        with Home("kill9") as home:
            elapsed, watched = kill9_once(home)
            results.append(elapsed)
    b.add(
        section,
        "SIGKILL server -> last descendant gone: max",
        max(results) * 1000,
        "ms",
        f"{len(results)} run(s); {watched} processes watched (job tree + executors)",
    )
