"""Job groups (``execution: parallel``) end to end through the real CLI: the tasks start
together (none while they cannot all start), and SkyPilot's ``primary_tasks`` /
``termination_delay`` stop the auxiliary task once the primary one ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import SkyMini, wait_for

GROUP = """\
name: train-with-services
execution: parallel
primary_tasks: [trainer]
termination_delay: 2s
---
name: trainer
resources: {{cpus: 1}}
run: |
  while [ ! -e {go} ]; do sleep 0.05; done
  echo trained
---
name: data-server
resources: {{cpus: 1}}
run: |
  echo serving
  exec sleep 600
"""


def job(sky: SkyMini, job_id: int) -> dict[str, Any]:
    """The job's record as a user sees it: ``jobs queue --all --json``."""
    records = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    return next(r for r in records if r["id"] == job_id)


def wait_status(sky: SkyMini, job_id: int, status: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        record = job(sky, job_id)
        return record if record["status"] == status else None

    found: dict[str, Any] = wait_for(check, timeout, f"job {job_id} {status}")
    return found


def launch_blocker(sky: SkyMini, gate: Path) -> int:
    """A 1-CPU job that holds its CPU until ``gate`` exists."""
    return int(
        sky.run(
            "jobs",
            "launch",
            "--async",
            "--cpus",
            "1",
            "--",
            "sh",
            "-c",
            f"while [ ! -e {gate} ]; do sleep 0.05; done",
            check=True,
        ).out
    )


def test_group_starts_together_and_the_auxiliary_stops_after_the_delay(
    sky: SkyMini, tmp_path: Path
) -> None:
    sky.extra_env["SKY_MINI_CPUS"] = "2"
    sky.serve_foreground()
    free = tmp_path / "free"
    go = tmp_path / "go"
    blocker = launch_blocker(sky, free)
    wait_status(sky, blocker, "RUNNING")
    path = tmp_path / "group.yaml"
    path.write_text(GROUP.format(go=go), encoding="utf-8")
    ids = [int(x) for x in sky.run("jobs", "launch", "--async", str(path), check=True).out.split()]
    assert len(ids) == 2
    trainer, data = ids
    # One CPU is free, enough for either task alone: neither starts, and the reason says why.
    wait_for(
        lambda: "all 2 tasks start together" in str(job(sky, data)["reason"]),
        timeout=30,
        message="the group's waiting reason",
    )
    assert [job(sky, j)["status"] for j in ids] == ["PENDING", "PENDING"]
    assert "train-with-services" in str(job(sky, trainer)["reason"])
    free.touch()
    wait_status(sky, trainer, "RUNNING")
    wait_status(sky, data, "RUNNING")
    starts = [float(str(job(sky, j)["started_at"])) for j in ids]
    assert abs(starts[0] - starts[1]) < 1.0, starts  # the same tick
    go.touch()
    wait_status(sky, trainer, "SUCCEEDED")
    final = wait_status(sky, data, "CANCELLED")
    assert final["reason_code"] == "group_done", final
    assert "primary task" in str(final["reason"])
    trainer_end = float(str(job(sky, trainer)["finished_at"]))
    assert float(str(final["finished_at"])) >= trainer_end + 2.0  # termination_delay
    assert sky.run("jobs", "logs", str(data), "--no-follow", check=True).out == "serving\n"
    # The auxiliary ended as planned: waiting on the whole group exits 0 (a failed primary
    # would not).
    assert sky.run("jobs", "wait", str(trainer), str(data), timeout=60).code == 0
    assert job(sky, data)["group"] == {
        "id": trainer,
        "size": 2,
        "primary": False,
        "termination_delay": 2.0,
    }
    table = sky.run("jobs", "queue", check=True).out.splitlines()
    header = next(i for i, line in enumerate(table) if "[train-with-services]" in line)
    assert [line.split()[1] for line in table[header + 1 : header + 3]] == [
        "trainer",
        "data-server",
    ]


def test_dry_run_shows_roles_and_bad_primary_is_refused(sky: SkyMini, tmp_path: Path) -> None:
    path = tmp_path / "group.yaml"
    path.write_text(GROUP.format(go=tmp_path / "go"), encoding="utf-8")
    plan = sky.run("jobs", "launch", "--dry-run", str(path), check=True).out
    assert "started together (job group)" in plan
    assert "role:        primary" in plan
    assert "auxiliary: stopped 2s after every primary task ended" in plan
    path.write_text(GROUP.format(go="x").replace("[trainer]", "[trainr]"), encoding="utf-8")
    refused = sky.run("jobs", "launch", "--async", str(path))
    assert refused.code == 2, refused
    assert "primary_tasks" in refused.err and "'trainr'" in refused.err
    assert "Traceback" not in refused.err
