"""``drain``: how fast a queue of PENDING jobs runs to completion."""

from __future__ import annotations

import os
import subprocess
import time

from scripts.benchmarks import peers
from scripts.benchmarks.harness import (
    SHELL,
    Bench,
    Home,
    base_env,
    wait_for,
)
from sky_mini.models import JobRecord, JobStatus
from sky_mini.state import Store


def bench_drain(b: Bench) -> None:
    section = "3 drain"
    count = 100
    executors = 2
    env = base_env()
    argv = [SHELL, "-c", "true"]
    start = time.perf_counter()
    for _ in range(count):
        subprocess.run(argv, env=env, check=True)
    plain = (time.perf_counter() - start) / count
    with Home("drain") as home:
        home.start("--executors", str(executors))
        home.wait_idle()
        from sky_mini.client import wake_server
        from sky_mini.spec import task_from_command

        task = task_from_command(["true"], name=None, cwd=home.dir).to_json()
        store = Store(home.paths)
        job_env = dict(home.env)
        start = time.perf_counter()
        first = time.time()
        for _ in range(count):

            def build(job_id: int) -> JobRecord:
                return JobRecord(
                    id=job_id,
                    task=task,
                    name="true",
                    log_path=home.paths.job_log(job_id),
                    submitted_at=first,
                    env=job_env,
                )

            store.create_job(build)
        wake_server(home.paths)
        lowest = 1
        terminal = {s.value for s in JobStatus if s.is_terminal}

        def all_done() -> bool:
            nonlocal lowest
            while lowest <= count:
                try:
                    status = home.job(lowest)["status"]
                except (OSError, ValueError):
                    return False
                if status not in terminal:
                    return False
                lowest += 1
            return True

        wait_for(all_done, 600, "the queue to drain", poll=0.005)
        wall = time.perf_counter() - start
        succeeded = sum(1 for j in range(1, count + 1) if home.job(j)["status"] == "SUCCEEDED")
    per_job = wall * executors / count
    b.add(
        section,
        f"{count} x 'true' with {executors} executors: wall",
        wall * 1000,
        "ms",
        f"{count / wall:.1f} jobs/s; {succeeded} SUCCEEDED",
    )
    b.add(section, "per job per executor (wall x executors / jobs)", per_job * 1000, "ms")
    b.add(section, f"plain fork+exec loop ({os.path.basename(SHELL)} -c true)", plain * 1000, "ms")
    b.add(section, "sky-mini overhead per job", (per_job - plain) * 1000, "ms")
    peers.drain_rows(b, section, wall, plain, count, executors)
