"""Work handed to Slurm outlives the server: kill -9, a forgotten job, a restarted
slurmctld, a crash between sbatch and the record, one squeue per poll."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import SkyMini, pid_alive, wait_for
from tests.slurm.conftest import Cluster
from tests.slurm.test_slurm_jobs import launch, queue_json, wait_status

FINAL = ("SUCCEEDED", "FAILED", "KILLED", "CANCELLED", "FAILED_SETUP")


def slurm_ids_named(cluster: Cluster, name: str) -> list[str]:
    out = cluster.run("squeue", "-h", "-t", "all", "-n", name, "-o", "%i").stdout
    return out.split()


def kill9_server(sky: SkyMini) -> None:
    pid = sky.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 20, "the killed server to be gone")


def test_kill9_server_mid_job_then_new_server_records_outcome(
    slurm_sky: SkyMini, slurm_cluster: Cluster
) -> None:
    job = launch(slurm_sky, "--", "sh", "-c", "sleep 4; echo finished-on-slurm; exit 0")
    record = wait_status(slurm_sky, slurm_cluster, job, ("RUNNING",))
    slurm_id = str(record["slurm_job_id"])
    kill9_server(slurm_sky)
    state = slurm_cluster.run("squeue", "-h", "-j", slurm_id, "-o", "%T").stdout.strip()
    assert state in ("RUNNING", "COMPLETING", "COMPLETED"), slurm_cluster.said()
    # jobs wait auto-starts a new server, which re-attaches instead of resubmitting.
    assert slurm_sky.run("jobs", "wait", str(job), timeout=120).code == 0
    final = queue_json(slurm_sky)[job]
    assert final["status"] == "SUCCEEDED" and final["exit_code"] == 0
    assert final["slurm_job_id"] == slurm_id
    assert slurm_ids_named(slurm_cluster, f"sky-mini-{slurm_sky.key}-{job}") == [slurm_id]
    assert "finished-on-slurm" in slurm_sky.run("jobs", "logs", str(job), "--no-follow").out


def test_graceful_stop_leaves_slurm_jobs_running(
    slurm_sky: SkyMini, slurm_cluster: Cluster
) -> None:
    job = launch(slurm_sky, "--", "sh", "-c", "sleep 4; exit 6")
    wait_status(slurm_sky, slurm_cluster, job, ("RUNNING",))
    assert slurm_sky.run("api", "stop", timeout=60).code == 0
    assert queue_json(slurm_sky)[job]["status"] == "RUNNING"  # not KILLED shutdown
    assert slurm_sky.run("jobs", "wait", str(job), timeout=120).code == 6
    assert queue_json(slurm_sky)[job]["reason_code"] == "exit_code"


@pytest.fixture
def short_min_job_age(slurm_cluster: Cluster) -> Iterator[None]:
    done = slurm_cluster.dev("reconfigure", "--min-job-age", "2")
    assert done.returncode == 0, done
    try:
        yield
    finally:
        slurm_cluster.dev("reconfigure", "--min-job-age", "3600")


def test_job_slurm_forgot_while_server_was_down_gets_true_outcome(
    slurm_sky: SkyMini, slurm_cluster: Cluster, short_min_job_age: None
) -> None:
    job = launch(slurm_sky, "--", "sh", "-c", "sleep 3; exit 5")
    record = wait_status(slurm_sky, slurm_cluster, job, ("RUNNING",))
    slurm_id = str(record["slurm_job_id"])
    kill9_server(slurm_sky)

    def forgotten() -> bool:
        done = slurm_cluster.run("scontrol", "show", "job", slurm_id)
        return done.returncode != 0 and "Invalid job id" in done.stderr

    # slurmctld purges finished jobs older than MinJobAge on its own schedule (~1 min).
    wait_for(forgotten, 180, f"Slurm to forget job {slurm_id}")
    assert slurm_sky.run("jobs", "wait", str(job), timeout=120).code == 5
    final = queue_json(slurm_sky)[job]
    assert final["status"] == "FAILED" and final["exit_code"] == 5, final


def test_slurmctld_restart_mid_job_changes_nothing(
    slurm_sky: SkyMini, slurm_cluster: Cluster
) -> None:
    job = launch(slurm_sky, "--", "sh", "-c", "sleep 8; exit 0")
    wait_status(slurm_sky, slurm_cluster, job, ("RUNNING",))
    stopped = slurm_cluster.dev("restart-controller")
    assert stopped.returncode == 0, stopped
    assert queue_json(slurm_sky)[job]["status"] == "RUNNING"
    final = wait_status(slurm_sky, slurm_cluster, job, FINAL, 120)
    assert final["status"] == "SUCCEEDED", (final, slurm_cluster.said())


@pytest.mark.parametrize("lookup", ["on", "off"], ids=["found-by-name", "negative-control"])
def test_crash_between_sbatch_and_record_submits_once(
    slurm_sky: SkyMini, slurm_cluster: Cluster, lookup: str
) -> None:
    slurm_sky.extra_env["SKY_MINI_SLURM_FAULT"] = "after_sbatch"
    server = slurm_sky.popen("serve", "--foreground", stdout=subprocess.DEVNULL)
    wait_for(lambda: slurm_sky.status_ok(server.pid), 30, "server healthy")
    job = launch(slurm_sky, "--", "sh", "-c", "sleep 1; echo once")
    assert server.wait(60) == 70  # died right after sbatch answered
    del slurm_sky.extra_env["SKY_MINI_SLURM_FAULT"]
    if lookup == "off":
        slurm_sky.extra_env["SKY_MINI_DISABLE"] = "slurm_lookup"
    slurm_sky.run("jobs", "wait", str(job), timeout=120)
    name = f"sky-mini-{slurm_sky.key}-{job}"
    ids = slurm_ids_named(slurm_cluster, name)
    if lookup == "on":
        assert len(ids) == 1, slurm_cluster.said()
        assert queue_json(slurm_sky)[job]["status"] == "SUCCEEDED"
    else:
        assert len(ids) == 2, slurm_cluster.said()  # the check can fail without the lookup


def test_twenty_jobs_one_squeue_per_poll(
    slurm_sky: SkyMini, slurm_cluster: Cluster, tmp_path: os.PathLike[str]
) -> None:
    """A PATH shim counts every squeue the server runs; polls come from api status."""
    shim_dir = os.path.join(str(tmp_path), "shim")
    os.makedirs(shim_dir)
    count_file = os.path.join(str(tmp_path), "squeue.count")
    real = subprocess.run(["which", "squeue"], capture_output=True, text=True).stdout.strip()
    shim = os.path.join(shim_dir, "squeue")
    with open(shim, "w") as handle:
        handle.write(f'#!/bin/sh\necho "$*" >> {count_file}\nexec {real} "$@"\n')
    os.chmod(shim, os.stat(shim).st_mode | stat.S_IEXEC)
    slurm_sky.extra_env["PATH"] = shim_dir + os.pathsep + os.environ["PATH"]
    jobs = [launch(slurm_sky, "--", "sleep", "6") for _ in range(20)]

    def polls() -> int:
        status = slurm_sky.status() or {}
        rows = [c for c in status.get("components", []) if c.get("kind") == "slurm-controller"]
        return int(rows[0]["polls"]) if rows else 0

    for job in jobs:
        wait_status(slurm_sky, slurm_cluster, job, FINAL, 180)
    with open(count_file) as handle:
        calls = [line for line in handle if "-j" in line.split()]
    assert polls() >= 1
    # One squeue -j per poll (plus none per job): the status heartbeat may lag by a poll.
    assert polls() <= len(calls) <= polls() + 2, (len(calls), polls())
    assert max(len(line.split("-j", 1)[1].split()[0].split(",")) for line in calls) >= 10
