"""scripts/bench as a package: one module per measurement, one shared harness.

sky-mini benchmark: submission, following, draining, footprint, start-up and clean-up.

Run it as ``./scripts/bench`` (creates .venv on first use) or ``.venv/bin/python
scripts/bench.py``; ``--quick`` for a shorter run, ``--json`` for machine-readable output.
Every measurement uses its own temporary ``SKY_MINI_HOME``, starts its own server and stops
it at the end; processes are cleaned up by the home's ``SKY_MINI_MARKER`` only.

Speed targets live here, not in the tests (STYLE 20). Numbers are wall-clock on whatever
machine runs this: compare runs on the same machine, and see docs/PERFORMANCE.md.

Benchmark fixture: histories of 100 / 10,000 finished jobs are written directly in the store
format (``sky_mini.state.Store`` + ``sky_mini.models.JobRecord``, plus ``next_id`` and the
active index as a server leaves them), because submitting 10,000 jobs through the CLI would
take a quarter of an hour and measure nothing new. The drain measurement likewise creates
its 100 PENDING records through ``Store.create_job`` (the CLI's own code path) so that all of
them are queued before the server is woken.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from scripts.benchmarks import (
    concurrent,
    drain,
    followers,
    footprint,
    harness,
    http,
    kill9,
    latency,
    launch,
    peers,
    slurm,
    start,
    watchdog,
)
from scripts.benchmarks.harness import SKY, Bench, Home, base_env, machine, render

SECTIONS: dict[str, Callable[[Bench], None]] = {
    "launch": launch.bench_launch_latency,
    "cron": lambda b: peers.bench_cron(b, Home, SKY, base_env),
    "burst": lambda b: peers.bench_burst(b, Home, SKY, base_env),
    "concurrent": concurrent.bench_concurrent,
    "drain": drain.bench_drain,
    "latency": latency.bench_start_latency,
    "footprint": footprint.bench_footprint,
    "start": start.bench_start_status_queue,
    "kill9": kill9.bench_kill9,
    "followers": followers.bench_followers,
    "http": lambda b: http.run(b, Home, footprint.footprint),
    "watchdog": watchdog.run,
    "lb": lambda b: peers.bench_lb(b, Home),
    "failover": lambda b: peers.bench_failover(b, Home),
    "slurm": slurm.bench_slurm,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="sky-mini benchmark: submission, following, draining, footprint, "
        "start-up and clean-up."
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, fewer cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SECTIONS),
        help="run only these measurements (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print rows as they come")
    parser.add_argument(
        "--disable",
        metavar="LIST",
        default="",
        help="run every server with SKY_MINI_DISABLE=LIST (an A/B run of one switch)",
    )
    args = parser.parse_args(argv)
    if args.disable:
        from sky_mini.config import parse_disabled

        parse_disabled(args.disable)  # a typo fails here, not in the first server
        os.environ[harness.BENCH_DISABLE_ENV] = args.disable
    if not sys.platform.startswith("linux"):
        print("scripts/bench measures a Linux supervisor; run it on Linux", file=sys.stderr)
        return 2
    bench = Bench(quick=args.quick, verbose=args.verbose)
    info = machine()
    for name, run in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        print(f"==> {name}", file=sys.stderr)
        run(bench)
    if args.json:
        print(json.dumps({"machine": info, "results": [r.__dict__ for r in bench.rows]}, indent=1))
    else:
        print(render(info, bench.rows))
    return 0
