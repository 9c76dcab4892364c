"""Soak: 1,000 queued trivial jobs and 64 log followers; the server neither grows nor leaks.

Submission goes through ``sky_mini.client.submit_job`` in-process (the exact function
``jobs launch --async`` calls: a real record under the ID lock, then a wake-up), because
1,000 CLI start-ups would cost ~150 s of CPU on 2 cores. Followers are real
``jobs logs ID --follow`` CLIs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import SkyMini, wait_for
from tests.reliability.common import all_records
from tests.reliability.conftest import report

TOTAL_JOBS = 1000
WARMUP_JOBS = 100
FOLLOWERS = 64
RSS_GROWTH_LIMIT = 0.10
FD_SLACK = 4


def submit(sky: SkyMini, count: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from sky_mini import client
    from sky_mini.paths import get_paths
    from sky_mini.spec import ResourceSpec, TaskSpec

    monkeypatch.setenv("SKY_MINI_HOME", sky.home)
    paths = get_paths()
    task = TaskSpec(run="echo soak", resources=ResourceSpec(cpus=0.1)).to_json()
    ids = [client.submit_job(paths, task, "soak").id for _ in range(count)]
    assert client.wake_server(paths)
    return ids


def wait_all_done(sky: SkyMini, ids: list[int], timeout: float) -> None:
    last = max(ids)

    def done() -> bool:
        records = all_records(sky)
        return all(records[i]["status"] == "SUCCEEDED" for i in ids if i <= last)

    wait_for(done, timeout, f"jobs {min(ids)}..{last} to succeed")


def measure(pid: int) -> tuple[int, int]:
    return psutil.Process(pid).memory_info().rss, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def test_soak_thousand_jobs_and_followers(sky: SkyMini, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    server = sky.serve_foreground()
    ids = submit(sky, TOTAL_JOBS, monkeypatch)  # all 1,000 queued at once
    first, rest = ids[:WARMUP_JOBS], ids[WARMUP_JOBS:]
    wait_all_done(sky, first, 60)
    rss_warm, fds_warm = measure(server.pid)  # the queue is in memory from here on
    step = len(rest) // FOLLOWERS
    followed = rest[step - 1 :: step][:FOLLOWERS]
    followers = [
        sky.popen("jobs", "logs", str(job_id), "--follow", stdout=subprocess.PIPE)
        for job_id in followed
    ]
    wait_all_done(sky, rest, 120)
    for job_id, proc in zip(followed, followers, strict=True):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (job_id, out, err)
        assert out == b"soak\n", (job_id, out)
    records = all_records(sky)
    assert len(records) == TOTAL_JOBS
    assert all(r["status"] == "SUCCEEDED" for r in records.values())
    # Let the server finish its last writes, then measure.
    wait_for(lambda: (sky.status() or {}).get("queue", {}).get("running") == 0, 30)
    rss_end, fds_end = measure(server.pid)
    growth = (rss_end - rss_warm) / rss_warm
    line = (
        f"soak: {TOTAL_JOBS} jobs + {FOLLOWERS} followers in {time.monotonic() - started:.1f}s; "
        f"server RSS {rss_warm / 2**20:.1f} MiB after {WARMUP_JOBS} jobs -> "
        f"{rss_end / 2**20:.1f} MiB at the end ({growth:+.1%}); fds {fds_warm} -> {fds_end}"
    )
    report(line)
    print(line, file=sys.stderr)
    assert growth <= RSS_GROWTH_LIMIT, line
    assert fds_end <= fds_warm + FD_SLACK, line
