"""``concurrent``: many ``launch --async`` at once (cron bursts)."""

from __future__ import annotations

import os
import subprocess
import time

from scripts.benchmarks.harness import (
    SKY,
    Bench,
    Home,
)


def bench_concurrent(b: Bench) -> None:
    section = "2 concurrent --async"
    cases = (
        [(30, False), (100, False)]
        if b.quick
        else [(30, False), (30, True), (100, False), (100, True)]
    )
    for count, warm in cases:
        with Home("burst") as home:
            if warm:
                home.start()
            argv = [*SKY, "jobs", "launch", "--async", "--", "true"]
            start = time.perf_counter()
            procs = [
                subprocess.Popen(argv, env=home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(count)
            ]
            outs = [p.communicate(timeout=600) for p in procs]
            wall = time.perf_counter() - start
            printed = [int(out) for out, _ in outs if out.strip().isdigit()]
            failed = sum(1 for p in procs if p.returncode != 0)
            recorded = {int(n[:-5]) for n in os.listdir(home.paths.jobs_dir) if n[:1].isdigit()}
            expected = set(range(1, count + 1))
            lost = len(expected - (set(printed) & recorded))
            duplicates = len(printed) - len(set(printed))
            # Recorded is not enough: every job must also run (a start-up race once left
            # some PENDING for ever).
            wait = [*SKY, "jobs", "wait", "--timeout", "120", *map(str, sorted(recorded))]
            all_ran = subprocess.run(wait, env=home.env, capture_output=True).returncode == 0
            with open(home.paths.server_log) as handle:
                servers = handle.read().count(" serving (pid ")
            label = f"{count} at once, {'server running' if warm else 'no server (auto-start)'}"
            b.add(section, f"{label}: wall", wall * 1000, "ms")
            b.add(
                section,
                f"{label}: lost / duplicate / failed",
                f"{lost} / {duplicates} / {failed}",
                note=(
                    f"IDs 1..{count}: {sorted(printed) == sorted(expected)}; servers: {servers}; "
                    f"all SUCCEEDED: {all_ran}"
                ),
            )
