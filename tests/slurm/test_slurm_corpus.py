"""Real SkyPilot task YAMLs (tests/fixtures/skypilot) run unchanged on the test Slurm cluster
through the real CLI, with ``--infra slurm`` (they name no infra, or a cloud): a pipeline, a
setup-only task, a failing setup, a retried pipeline that stops, and a job group.

The cluster's one node has the machine's CPUs (2 here) and at most 4 GB. ``e-chain_dag-2_jobs``
asks for ``cpus: 2+, memory: 8+`` and ``cpus: 4+``, more than that node has, so it runs with
``--cpus 1 --memory 512M`` (overrides the command line gives every task); every other file
runs with its own resources.
"""

from __future__ import annotations

import math
from pathlib import Path

from tests.helpers import SkyMini
from tests.slurm.conftest import Cluster
from tests.slurm.test_slurm_jobs import queue_json, wait_status

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "skypilot"
TERMINAL = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "CANCELLED", "KILLED")


def launch_file(sky: SkyMini, name: str, *flags: str) -> list[int]:
    out = sky.run(
        "jobs", "launch", "--async", "--infra", "slurm", *flags, str(CORPUS / name), check=True
    ).out
    return [int(x) for x in out.split()]


def logs(sky: SkyMini, job_id: int) -> str:
    return sky.run("jobs", "logs", str(job_id), "--no-follow", check=True).out


def test_corpus_pipeline_and_setup_only_succeed_on_slurm(
    slurm_sky: SkyMini, slurm_cluster: Cluster
) -> None:
    chain = launch_file(slurm_sky, "e-chain_dag-2_jobs.yaml", "--cpus", "1", "--memory", "512M")
    only_setup = launch_file(slurm_sky, "t-test_only_setup.yaml")
    ranks = launch_file(slurm_sky, "t-multi_node_sleep.yaml")
    for job in chain + only_setup + ranks:
        record = wait_status(slurm_sky, slurm_cluster, job, TERMINAL, timeout=120)
        assert record["status"] == "SUCCEEDED", (record, slurm_cluster.said())
        assert record["infra"] == "slurm" and str(record["slurm_job_id"]).isdigit()
    records = queue_json(slurm_sky)
    assert [records[j]["pipeline"] for j in chain] == ["dag-name", "dag-name"]
    assert records[chain[1]]["after"] == [chain[0]]
    # The second is submitted only once the first is seen finished; its started_at is Slurm's
    # StartTime, which Slurm keeps in whole seconds.
    assert float(str(records[chain[1]]["started_at"])) >= math.floor(
        float(str(records[chain[0]]["finished_at"]))
    )
    assert records[chain[0]]["resources"]["cpus"] == 1.0  # the override, said above
    assert logs(slurm_sky, chain[0]) == "setup for task 1\nrun for task 1\n"
    assert logs(slurm_sky, chain[1]) == "setup for task 2\nrun for task 2\n"
    assert logs(slurm_sky, only_setup[0]) == "hello world\n"
    assert "done" in logs(slurm_sky, ranks[0])  # SKYPILOT_NODE_RANK is 0 on a 1-node job


def test_corpus_failures_end_as_skypilot_says_on_slurm(
    slurm_sky: SkyMini, slurm_cluster: Cluster
) -> None:
    failed_setup = launch_file(slurm_sky, "t-failed_setup.yaml")
    retry = launch_file(slurm_sky, "t-test_managed_jobs_retry.yaml")  # cpus: 2+, 1 restart
    first = wait_status(slurm_sky, slurm_cluster, failed_setup[0], TERMINAL, timeout=120)
    assert first["status"] == "FAILED_SETUP", (first, slurm_cluster.said())
    assert "failed setup" in logs(slurm_sky, failed_setup[0])
    assert "echo run" not in logs(slurm_sky, failed_setup[0])
    end = wait_status(slurm_sky, slurm_cluster, retry[0], TERMINAL, timeout=180)
    assert end["status"] == "FAILED" and end["attempt"] == 2, (end, slurm_cluster.said())
    second = wait_status(slurm_sky, slurm_cluster, retry[1], TERMINAL, timeout=60)
    assert second["status"] == "CANCELLED" and second["reason_code"] == "dependency_failed"
    assert f"job {retry[0]}" in str(second["reason"])


GROUP = """\
name: slurm-group
execution: parallel
primary_tasks: [main]
termination_delay: 1s
---
name: main
run: echo main done
---
name: helper
run: |
  echo helping
  exec sleep 600
"""


def test_job_group_on_slurm_stops_the_auxiliary(
    slurm_sky: SkyMini, slurm_cluster: Cluster, tmp_path: Path
) -> None:
    path = tmp_path / "group.yaml"
    path.write_text(GROUP, encoding="utf-8")
    out = slurm_sky.run("jobs", "launch", "--async", "--infra", "slurm", str(path), check=True)
    main, helper = (int(x) for x in out.out.split())
    done = wait_status(slurm_sky, slurm_cluster, main, TERMINAL, timeout=120)
    assert done["status"] == "SUCCEEDED", (done, slurm_cluster.said())
    stopped = wait_status(slurm_sky, slurm_cluster, helper, TERMINAL, timeout=120)
    assert stopped["status"] == "CANCELLED", (stopped, slurm_cluster.said())
    assert stopped["reason_code"] == "group_done" and "primary task" in str(stopped["reason"])
    assert float(str(stopped["finished_at"])) >= float(str(done["finished_at"])) + 1.0
    assert "helping" in logs(slurm_sky, helper)
