"""``followers``: many ``jobs logs --follow`` at once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import psutil

from scripts.benchmarks.harness import (
    FOLLOWERS,
    SKY,
    Bench,
    Home,
    summarize,
    wait_for,
)
from scripts.benchmarks.latency import measure_start_latency


def inotify_fds(pid: int) -> int:
    count = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:inotify":
                    count += 1
    return count


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def bench_followers(b: Bench) -> None:
    section = f"8 with {FOLLOWERS} followers"
    with Home("follow") as home:
        home.start("--executors", "2")
        home.wait_idle()
        chatty = "while :; do echo tick; sleep 0.05; done"  # 20 lines/s to every follower
        job_id = home.sky("jobs", "launch", "--async", "--", "sh", "-c", chatty).strip()
        outputs = [os.path.join(home.dir, f"follower-{i}.out") for i in range(FOLLOWERS)]
        followers: list[subprocess.Popen[bytes]] = []
        try:
            for path in outputs:
                with open(path, "wb") as out:
                    followers.append(
                        subprocess.Popen(
                            [*SKY, "jobs", "logs", job_id],
                            env=home.env,
                            stdout=out,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            wait_for(lambda: all(os.path.getsize(p) > 0 for p in outputs), 300, "followers")
            on_inotify = sum(1 for f in followers if inotify_fds(f.pid))
            watched = [psutil.Process(f.pid) for f in followers]
            server_pid = home.server_pid()
            assert server_pid is not None
            server = [psutil.Process(server_pid)]
            cpu_followers = cpu_seconds(watched)
            cpu_server = cpu_seconds(server)
            start = time.perf_counter()
            from_cli, from_record = measure_start_latency(home, b.reps)
            window = time.perf_counter() - start
            cpu_followers = cpu_seconds(watched) - cpu_followers
            cpu_server = cpu_seconds(server) - cpu_server
            still = sum(1 for f in followers if f.poll() is None)
        finally:
            for proc in followers:
                if proc.poll() is None:
                    proc.kill()
            for proc in followers:
                proc.wait()
    median, p90 = summarize(from_cli)
    b.add(section, "CLI invoked -> job running: median / p90", f"{median:.1f} / {p90:.1f}", "ms")
    median, p90 = summarize(from_record)
    b.add(section, "record written -> job running: median / p90", f"{median:.1f} / {p90:.1f}", "ms")
    b.add(
        section,
        "followers on inotify / on the poll fallback",
        f"{on_inotify} / {FOLLOWERS - on_inotify}",
        "",
        "fs.inotify.max_user_instances caps inotify users per uid",
    )
    b.add(
        section,
        f"CPU of all {FOLLOWERS} followers during the window",
        100 * cpu_followers / window,
        "% of a core",
        f"{window:.1f}s window, 20 lines/s each; {still} still attached",
    )
    b.add(
        section,
        "server CPU during the window",
        100 * cpu_server / window,
        "% of a core",
        "followers never contact the server",
    )
