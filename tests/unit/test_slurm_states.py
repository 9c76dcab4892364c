"""Every Slurm state and exit-code shape the backend can meet, and what it makes of it."""

from __future__ import annotations

import pytest

from sky_mini.models import JobStatus
from sky_mini.server.backends.slurm import states
from sky_mini.server.backends.slurm.states import JobContext, SlurmJob, decide


def ctx(**kw: object) -> JobContext:
    base: dict[str, object] = {
        "job_id": 7,
        "memory_bytes": None,
        "timeout_seconds": None,
        "cancel_requested": False,
        "exit_record": None,
    }
    base.update(kw)
    return JobContext(**base)  # type: ignore[arg-type]


# Measured on this machine (22.05): squeue -O 'JobID:|,State:|,Reason:|,exit_code:|,Name:|'
SQUEUE_2205 = """\
2|FAILED|NonZeroExitCode|768|sky-mini-abc-2|
1|OUT_OF_MEMORY|OutOfMemory|253|sky-mini-abc-1|
3|PENDING|Resources|0|sky-mini-abc-3|
4|RUNNING|None|0|sky-mini-abc-4|
garbage line
5|COMPLETING|None|0|sky-mini-abc-5|
"""

SCONTROL_OOM = """\
JobId=1 JobName=oomtest
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   JobState=OUT_OF_MEMORY Reason=OutOfMemory Dependency=(null)
   Requeue=0 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:125
"""


def test_parse_squeue_measured_output() -> None:
    jobs = states.parse_squeue(SQUEUE_2205)
    assert set(jobs) == {"1", "2", "3", "4", "5"}
    assert jobs["2"].exit_code_and_signal() == (3, 0)
    assert jobs["1"].state == "OUT_OF_MEMORY"
    assert jobs["3"].reason == "Resources"
    assert jobs["4"].name == "sky-mini-abc-4"


def test_parse_scontrol_exit_code_text() -> None:
    job = states.parse_scontrol(SCONTROL_OOM)["1"]
    assert job.state == "OUT_OF_MEMORY"
    assert job.exit_code_and_signal() == (0, 125)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CANCELLED by 0", "CANCELLED"),
        ("CANCELLED by 1000", "CANCELLED"),
        ("OUT_OF_ME+", "OUT_OF_MEMORY"),
        ("NODE_FAIL", "NODE_FAIL"),
        ("COMPLETED,REQUEUED", "COMPLETED"),
        ("running", "RUNNING"),
        ("TIMEO+", "TIMEOUT"),
        ("BRAND_NEW_STATE", "BRAND_NEW_STATE"),
    ],
)
def test_normalize_state(raw: str, expected: str) -> None:
    assert states.normalize_state(raw) == expected


def test_json_2205_shape() -> None:
    job = states.normalize_json_job(
        {
            "job_id": 1,
            "name": "n",
            "job_state": "OUT_OF_MEMORY",
            "state_reason": "OutOfMemory",
            "exit_code": 253,
        }  # fmt: skip
    )
    assert job is not None and job.state == "OUT_OF_MEMORY"
    assert job.exit_code_and_signal() == (0, 125)


def test_json_2311_shape() -> None:
    job = states.normalize_json_job(
        {
            "job_id": 9,
            "name": "n",
            "job_state": ["FAILED"],
            "state_reason": "NonZeroExitCode",
            "exit_code": {
                "status": ["EXITED"],
                "return_code": {"set": True, "infinite": False, "number": 3},
                "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""},
            },
        }
    )
    assert job is not None and job.job_id == "9" and job.state == "FAILED"
    assert job.exit_code_and_signal() == (3, 0)
    assert states.normalize_json_job({"job_id": {"set": False, "number": 0}}) is None


def test_completed_is_succeeded() -> None:
    decision = decide(SlurmJob("1", "COMPLETED", exit_status=0), ctx())
    assert decision.status is JobStatus.SUCCEEDED and decision.exit_code == 0


def test_failed_carries_exit_code() -> None:
    decision = decide(SlurmJob("1", "FAILED", exit_status=3 << 8), ctx())
    assert decision.status is JobStatus.FAILED and decision.exit_code == 3
    assert decision.reason_code == "exit_code" and "jobs logs 7" in (decision.reason or "")


def test_setup_failure_from_exit_record() -> None:
    record = {"phase": "setup", "exit_code": 4, "signal": None}
    decision = decide(SlurmJob("1", "FAILED", exit_status=4 << 8), ctx(exit_record=record))
    assert decision.status is JobStatus.FAILED_SETUP and decision.exit_code == 4


@pytest.mark.parametrize(
    "job",
    [
        SlurmJob("1", "OUT_OF_MEMORY", exit_code_text="0:125"),
        SlurmJob("1", "OUT_OF_MEMORY", exit_status=0),  # a wrapper that exited 0 (| cat)
        SlurmJob("1", states.normalize_state("OUT_OF_ME+")),
    ],
)
def test_out_of_memory_is_memory_limit_whatever_the_exit(job: SlurmJob) -> None:
    decision = decide(job, ctx(memory_bytes=50 * 1024 * 1024))
    assert decision.status is JobStatus.KILLED
    assert decision.reason_code == "memory_limit"
    assert "50 MiB" in (decision.reason or "")


def test_out_of_memory_without_limit_is_oom() -> None:
    decision = decide(SlurmJob("1", "OUT_OF_MEMORY"), ctx())
    assert decision.status is JobStatus.KILLED and decision.reason_code == "oom"


def test_timeout_by_slurm_and_by_wrapper() -> None:
    assert decide(SlurmJob("1", "TIMEOUT"), ctx(timeout_seconds=60)).reason_code == "timeout"
    record = {"phase": "run", "exit_code": 143, "timed_out": True}
    decision = decide(SlurmJob("1", "FAILED", exit_status=143 << 8), ctx(exit_record=record))
    assert decision.status is JobStatus.KILLED and decision.reason_code == "timeout"


def test_cancel_ours_and_outside() -> None:
    ours = decide(SlurmJob("1", "FAILED", exit_status=143 << 8), ctx(cancel_requested=True))
    assert ours.status is JobStatus.CANCELLED and ours.reason == "cancelled by user"
    outside = decide(SlurmJob("1", states.normalize_state("CANCELLED by 0")), ctx())
    assert outside.status is JobStatus.CANCELLED and "outside sky-mini" in (outside.reason or "")


@pytest.mark.parametrize(
    ("state", "code"),
    [("NODE_FAIL", "node_failure"), ("BOOT_FAIL", "node_failure"), ("PREEMPTED", "preempted")],
)
def test_node_failure_and_preemption(state: str, code: str) -> None:
    decision = decide(SlurmJob("1", state), ctx())
    assert decision.status is JobStatus.KILLED and decision.reason_code == code


@pytest.mark.parametrize("state", ["COMPLETING", "STAGE_OUT"])
def test_transient_states_change_nothing(state: str) -> None:
    assert decide(SlurmJob("1", state), ctx()).kind == "none"


def test_unknown_state_changes_nothing_and_says_so() -> None:
    decision = decide(SlurmJob("1", "BRAND_NEW_STATE"), ctx())
    assert decision.kind == "none" and "BRAND_NEW_STATE" in (decision.note or "")


def test_pending_reason_is_shown() -> None:
    decision = decide(SlurmJob("1", "PENDING", reason="Resources"), ctx())
    assert decision.kind == "pending" and decision.reason == "Slurm: Resources"


def test_absent_without_record_changes_nothing() -> None:
    assert decide(None, ctx()).kind == "none"


def test_absent_with_exit_record_gives_true_outcome() -> None:
    ok = decide(None, ctx(exit_record={"phase": "run", "exit_code": 0}))
    assert ok.status is JobStatus.SUCCEEDED
    bad = decide(None, ctx(exit_record={"phase": "run", "exit_code": 137, "signal": 9}))
    assert (
        bad.status is JobStatus.FAILED and bad.exit_code == 137 and "signal 9" in (bad.reason or "")
    )


def test_never_succeeded_without_evidence() -> None:
    """COMPLETED with no exit code at all is not taken as success (Galaxy #3779)."""
    decision = decide(SlurmJob("1", "COMPLETED"), ctx())
    assert decision.status is JobStatus.FAILED


def test_pending_for_ever_is_refused() -> None:
    decision = decide(SlurmJob("1", "PENDING", reason="PartitionConfig"), ctx())
    assert decision.kind == "refused" and decision.status is JobStatus.FAILED_SETUP
    assert "PartitionConfig" in (decision.reason or "")


def test_start_time_only_once_it_ran() -> None:
    text = (
        "5|RUNNING|None|0|n|2026-12-01T21:42:02|\n"
        "6|PENDING|Resources|0|n|2026-12-01T22:42:05|\n"
        "7|COMPLETED|None|0|n|N/A|\n"
    )
    jobs = states.parse_squeue(text)
    assert jobs["5"].start_time is not None and jobs["5"].start_time > 0
    assert jobs["6"].start_time is None  # a pending job's StartTime is Slurm's estimate
    assert jobs["7"].start_time is None
    shown = states.parse_scontrol("JobId=9 JobName=x JobState=FAILED StartTime=2026-12-01T21:42:02")
    assert shown["9"].start_time == jobs["5"].start_time
