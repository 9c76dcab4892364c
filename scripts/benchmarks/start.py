"""``start``: server start, ``api status`` and ``jobs queue`` against a history."""

from __future__ import annotations

import statistics

from scripts.benchmarks.harness import (
    HISTORY_JOBS,
    Bench,
    Home,
    summarize,
    write_history,
)


def bench_start_status_queue(b: Bench) -> None:
    section = "6 start/status/queue"
    starts = []
    for _ in range(3 if b.quick else 5):
        with Home("start") as home:
            starts.append(home.timed("api", "start", "--idle-minutes", "off"))
    b.add(
        section,
        "api start -> healthy (empty home): median",
        statistics.median(starts) * 1000,
        "ms",
        f"{len(starts)} starts",
    )
    for history in (100, HISTORY_JOBS):
        with Home("queue") as home:
            write_history(home, history)
            elapsed = home.timed("api", "start", "--idle-minutes", "off")
            b.add(
                section, f"api start -> healthy, {history:,} jobs in history", elapsed * 1000, "ms"
            )
            if history == HISTORY_JOBS:
                home.sky("api", "status")
                median, p90 = summarize([home.timed("api", "status") for _ in range(b.reps)])
                b.add(section, "api status: median / p90", f"{median:.1f} / {p90:.1f}", "ms")
            for args in (("jobs", "queue"), ("jobs", "queue", "--all", "--limit", "50")):
                home.sky(*args)
                median, p90 = summarize([home.timed(*args) for _ in range(b.reps)])
                b.add(
                    section,
                    f"{' '.join(args)}, {history:,} jobs: median / p90",
                    f"{median:.1f} / {p90:.1f}",
                    "ms",
                )
