"""``launch``: how long ``jobs launch --async`` takes, alone and with a history."""

from __future__ import annotations

import os
import sys

from scripts.benchmarks.harness import (
    HISTORY_JOBS,
    Bench,
    Home,
    base_env,
    run_timed,
    summarize,
    write_history,
)


def bench_launch_latency(b: Bench) -> None:
    """Cron's call, beside the interpreter and ``import click`` floors.

    All four are sampled in turn within one loop, so machine noise hits them alike.
    """
    section = "1 launch --async"
    env = base_env()
    floors = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import click' (floor)": [sys.executable, "-c", "import click"],
    }
    launch = ("jobs", "launch", "--async", "--", "true")
    samples: dict[str, list[float]] = {}
    with Home("launch") as empty, Home("launch-history") as full:
        write_history(full, HISTORY_JOBS)
        homes = {
            "sky-mini jobs launch --async -- true, 0 jobs in history": empty,
            f"sky-mini jobs launch --async -- true, {HISTORY_JOBS:,} jobs in history": full,
        }
        task_file = os.path.join(empty.dir, "task.yaml")
        with open(task_file, "w", encoding="utf-8") as handle:
            handle.write("name: cron\nresources: {cpus: 1, memory: 64M}\nrun: 'true'\n")
        yaml_label = "sky-mini jobs launch --async task.yaml (one task), 0 jobs in history"
        for home in homes.values():
            home.start()
            for _ in range(3):  # warm-up: page cache, bytecode
                home.sky(*launch)
        for argv in floors.values():
            run_timed(argv, env)
        for _ in range(b.reps):
            for label, argv in floors.items():
                samples.setdefault(label, []).append(run_timed(argv, env))
            for label, home in homes.items():
                samples.setdefault(label, []).append(home.timed(*launch))
            samples.setdefault(yaml_label, []).append(
                empty.timed("jobs", "launch", "--async", task_file)
            )
    for label, values in samples.items():
        median, p90 = summarize(values)
        b.add(section, f"{label}: median / p90", f"{median:.1f} / {p90:.1f}", "ms")
