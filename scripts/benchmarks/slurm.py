"""scripts/bench's Slurm rows: 100 ``--async`` jobs on a real single-node cluster.

Starts its own cluster with ``scripts/slurm-dev`` in a temporary directory (stopping exactly
what it started), and puts a counting shim in front of ``squeue`` on the server's PATH.
Rows: time to all-submitted (every record has its Slurm job ID), time to all-finished, and
``squeue`` calls per poll with 100 jobs in flight (the design says 1).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SLURM_DEV = os.path.join(HERE, "slurm-dev")
JOBS = 100


def start_cluster(directory: str) -> str | None:
    done = subprocess.run(
        [SLURM_DEV, "start", "--dir", directory], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip().splitlines()[-1].split("=", 1)[1]


def write_shim(directory: str, count_file: str) -> str:
    real = shutil.which("squeue") or "squeue"
    shim_dir = os.path.join(directory, "shim")
    os.makedirs(shim_dir, exist_ok=True)
    shim = os.path.join(shim_dir, "squeue")
    with open(shim, "w") as handle:
        handle.write(f'#!/bin/sh\necho "$*" >> {count_file}\nexec {real} "$@"\n')
    os.chmod(shim, os.stat(shim).st_mode | stat.S_IEXEC)
    return shim_dir


def slurm_row(status: dict[str, Any]) -> dict[str, Any]:
    for row in status.get("components", []):
        if row.get("kind") == "slurm-controller":
            return dict(row)
    return {}


def bench_slurm(b: Any) -> None:
    """Called by scripts/bench with its Bench; uses the harness's Home and wait_for."""
    from scripts.benchmarks.harness import Home, wait_for

    section = "9 slurm"
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        b.add(section, "skipped", "-", note="no Slurm and not root to install it")
        return
    cluster_dir = tempfile.mkdtemp(prefix="sky-bench-slurm-")
    conf = start_cluster(cluster_dir)
    if conf is None:
        b.add(section, "skipped", "-", note="scripts/slurm-dev start failed")
        shutil.rmtree(cluster_dir, ignore_errors=True)
        return
    count_file = os.path.join(cluster_dir, "squeue.calls")
    shim_dir = write_shim(cluster_dir, count_file)
    env = {"SLURM_CONF": conf, "PATH": shim_dir + os.pathsep + os.environ.get("PATH", "")}
    try:
        with Home("slurm", env) as home:
            home.start()
            start = time.perf_counter()
            for _ in range(JOBS):
                home.sky("jobs", "launch", "--async", "--infra", "slurm", "--", "true")
            submitted_cli = time.perf_counter() - start

            def all_have_ids() -> bool:
                return all(home.job(j).get("slurm_job_id") for j in range(1, JOBS + 1))

            wait_for(all_have_ids, 600, "every job submitted to Slurm", poll=0.05)
            submitted = time.perf_counter() - start
            in_flight = slurm_row(home.status())
            with open(count_file) as handle:
                before = sum(1 for line in handle if " -j " in f" {line}")
            polls_before = int(in_flight.get("polls") or 0)
            for j in range(1, JOBS + 1):
                home.wait_terminal(j, timeout=900)
            finished = time.perf_counter() - start
            after = slurm_row(home.status())
            with open(count_file) as handle:
                calls = sum(1 for line in handle if " -j " in f" {line}")
            polls = int(after.get("polls") or 0)
            succeeded = sum(1 for j in range(1, JOBS + 1) if home.job(j)["status"] == "SUCCEEDED")
    finally:
        subprocess.run([SLURM_DEV, "stop", "--dir", cluster_dir], capture_output=True, timeout=120)
        shutil.rmtree(cluster_dir, ignore_errors=True)
    b.add(section, f"{JOBS} x launch --async --infra slurm (CLI loop)", submitted_cli * 1000, "ms")
    b.add(section, f"{JOBS} jobs: until all submitted to Slurm", submitted * 1000, "ms")
    b.add(
        section,
        f"{JOBS} jobs: until all finished (2-CPU node)",
        finished * 1000,
        "ms",
        f"{succeeded} SUCCEEDED",
    )
    per_poll = (calls - before) / max(1, polls - polls_before)
    b.add(
        section,
        f"squeue calls per poll, {JOBS} jobs in flight",
        round(per_poll, 2),
        "",
        f"{calls - before} calls over {polls - polls_before} polls",
    )
