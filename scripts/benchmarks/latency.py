"""``latency``: record to RUNNING, and to the first output line."""

from __future__ import annotations

import time

from scripts.benchmarks import peers
from scripts.benchmarks.harness import (
    Bench,
    Home,
    summarize,
)


def measure_start_latency(home: Home, samples: int) -> tuple[list[float], list[float]]:
    """(CLI invoked -> job process running, record written -> job process running), seconds."""
    from_cli: list[float] = []
    from_record: list[float] = []
    for _ in range(samples):
        invoked = time.time()
        job_id = int(home.sky("jobs", "launch", "--async", "--", "date", "+%s.%N").strip())
        record = home.wait_terminal(job_id)
        with open(record["log_path"]) as handle:
            started = float(handle.read().strip())
        from_cli.append(started - invoked)
        from_record.append(started - record["submitted_at"])
    return from_cli, from_record


def bench_start_latency(b: Bench) -> None:
    section = "4 submit -> started"
    with Home("latency") as home:
        home.start("--executors", "2")
        home.wait_idle()
        home.sky("jobs", "launch", "--async", "--", "true")  # warm-up
        from_cli, from_record = measure_start_latency(home, b.reps)
    median, p90 = summarize(from_cli)
    b.add(
        section,
        "CLI invoked -> job running: median / p90",
        f"{median:.1f} / {p90:.1f}",
        "ms",
        "includes the CLI's own start-up",
    )
    median, p90 = summarize(from_record)
    b.add(
        section,
        "record written -> job running: median / p90",
        f"{median:.1f} / {p90:.1f}",
        "ms",
        "the server's part: wake-up, dispatch, fork, exec",
    )
    peers.latency_rows(b, section, from_record, b.reps)
