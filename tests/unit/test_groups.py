"""Job groups (``execution: parallel``) through the server's tick steps, with a fake backend:
gang start, and the end SkyPilot's ``primary_tasks`` / ``termination_delay`` give."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sky_mini.models import JobRecord, JobStatus
from sky_mini.server import groups
from sky_mini.server.backends.base import BackendEvent
from sky_mini.state import Store
from tests.unit.test_server_tick import FakeBackend, make_server

GiB = 1024**3


def submit(
    server: Any,
    *,
    cpus: float = 1.0,
    group: dict[str, Any] | None = None,
    name: str | None = None,
) -> JobRecord:
    resources = {"cpus": cpus, "memory_bytes": None, "timeout_seconds": None}

    def build(i: int) -> JobRecord:
        data = dict(group) if group else None
        if data is not None and not data.get("id"):
            data["id"] = i
        return JobRecord(
            id=i,
            task={"run": "true", "resources": resources},
            name=name or f"j{i}",
            log_path=server.paths.job_log(i),
            submitted_at=time.time(),
            pipeline="g" if group else None,
            group=data,
        )

    record = Store(server.paths).create_job(build)
    server.load_new_jobs()
    return record


def submit_group(
    server: Any, count: int, *, cpus: float = 1.0, primary: list[bool] | None = None, delay=0.0
) -> list[JobRecord]:
    records: list[JobRecord] = []
    for index in range(count):
        group = {
            "id": records[0].id if records else 0,
            "size": count,
            "primary": primary[index] if primary else True,
            "termination_delay": delay,
        }
        records.append(submit(server, cpus=cpus, group=group, name=f"t{index}"))
    return records


def finish(server: Any, job_id: int, status: JobStatus, now: float) -> None:
    server.apply_event(BackendEvent("finished", job_id, {"status": status.value}), now)
    assert isinstance(server.backend, FakeBackend)
    server.backend.running.pop(job_id, None)


def status(server: Any, job_id: int) -> JobStatus:
    record = server.jobs.get(job_id) or server.store.load_job(job_id)
    return record.status  # type: ignore[no-any-return]


def test_no_task_of_a_group_starts_until_all_can_start_at_once(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=2, memory=4 * GiB, slots=4)
    blocker = submit(server)
    server.dispatch_pending(time.time())
    assert status(server, blocker.id) is JobStatus.STARTING
    members = submit_group(server, 2)
    server.dispatch_pending(time.time())
    # One CPU is free: either task alone would fit, but not both: neither starts.
    assert [status(server, m.id) for m in members] == [JobStatus.PENDING] * 2
    reason = server.jobs[members[1].id].reason
    assert "job group 'g': all 2 tasks start together" in reason and "CPU" in reason, reason
    finish(server, blocker.id, JobStatus.SUCCEEDED, time.time())
    server.dispatch_pending(time.time())
    assert [status(server, m.id) for m in members] == [JobStatus.STARTING] * 2


def test_negative_control_without_the_group_one_task_starts_alone(tmp_path: Path) -> None:
    """The same shape without ``group``: one task does start on the free CPU, so the gang
    check above is what keeps them both waiting."""
    server = make_server(str(tmp_path), cpus=2, memory=4 * GiB, slots=4)
    submit(server)
    server.dispatch_pending(time.time())
    loose = [submit(server), submit(server)]
    server.dispatch_pending(time.time())
    assert [status(server, r.id) for r in loose] == [JobStatus.STARTING, JobStatus.PENDING]


def test_a_group_waits_for_executors_and_for_all_its_records(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=8, memory=8 * GiB, slots=1)
    members = submit_group(server, 2)
    server.dispatch_pending(time.time())
    assert [status(server, m.id) for m in members] == [JobStatus.PENDING] * 2
    assert "needs 2 free executors at once" in (server.jobs[members[0].id].reason or "")
    (tmp_path / "b").mkdir()
    wide = make_server(str(tmp_path / "b"), cpus=8, memory=8 * GiB, slots=4)
    half = submit(wide, group={"id": 0, "size": 2, "primary": True, "termination_delay": 0})
    wide.dispatch_pending(time.time())
    assert status(wide, half.id) is JobStatus.PENDING
    assert "waiting for its other tasks to be recorded" in (wide.jobs[half.id].reason or "")


def test_a_group_that_can_never_fit_together_fails_at_once(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=2, memory=4 * GiB, slots=4)
    members = submit_group(server, 2, cpus=1.5)
    server.dispatch_pending(time.time())
    for member in members:
        record = server.store.load_job(member.id)
        assert record.status is JobStatus.FAILED and record.reason_code == "never_fits"
        assert "needs 3 CPU" in record.reason and "start together" in record.reason


def test_a_member_cancelled_before_the_start_cancels_the_others(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=1, memory=4 * GiB, slots=4)
    blocker = submit(server)
    server.dispatch_pending(time.time())
    members = submit_group(server, 2)
    Store(server.paths).add_intent("cancel", members[1].id)
    server.handle_intents(time.time())
    finish(server, blocker.id, JobStatus.SUCCEEDED, time.time())
    server.dispatch_pending(time.time())
    first = server.store.load_job(members[0].id)
    assert first.status is JobStatus.CANCELLED and first.reason_code == "dependency_failed"
    assert f"job {members[1].id} (t1)" in first.reason


def test_auxiliaries_stop_termination_delay_after_the_last_primary_ends(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=4, memory=4 * GiB, slots=4)
    trainer, data = submit_group(server, 2, primary=[True, False], delay=30.0)
    server.dispatch_pending(100.0)
    assert isinstance(server.backend, FakeBackend)
    finish(server, trainer.id, JobStatus.SUCCEEDED, 1000.0)
    groups.stop_auxiliaries(server, 1029.0)
    assert server.backend.stops == []
    groups.stop_auxiliaries(server, 1030.0)
    assert server.backend.stops == [(data.id, "group")]
    assert server.jobs[data.id].reason == groups.STOPPING_REASON
    groups.stop_auxiliaries(server, 1031.0)
    assert server.backend.stops == [(data.id, "group")], "asked once; the executor escalates"


def test_without_primary_tasks_every_task_runs_to_its_own_end(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=4, memory=4 * GiB, slots=4)
    first, _second = submit_group(server, 2)
    server.dispatch_pending(100.0)
    finish(server, first.id, JobStatus.SUCCEEDED, 200.0)
    groups.stop_auxiliaries(server, 10_000.0)
    assert isinstance(server.backend, FakeBackend) and server.backend.stops == []


def test_a_retried_member_of_a_started_group_starts_alone(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=2, memory=4 * GiB, slots=4)
    first, second = submit_group(server, 2)
    server.dispatch_pending(100.0)
    record = server.jobs[second.id]
    record.status, record.executor = JobStatus.PENDING, None  # as a retry puts it back
    assert isinstance(server.backend, FakeBackend)
    server.backend.running.pop(second.id)
    server.capacity.release(second.id)
    server.dispatch_pending(101.0)
    assert status(server, second.id) is JobStatus.STARTING
    assert status(server, first.id) is JobStatus.STARTING


def test_a_cancel_the_group_asked_for_ends_group_done(tmp_path: Path) -> None:
    """A cluster backend only knows "cancel": its CANCELLED still says why (group_done),
    while a user's own cancel of the same job would keep its reason."""
    server = make_server(str(tmp_path), cpus=4, memory=4 * GiB, slots=4)
    trainer, data = submit_group(server, 2, primary=[True, False], delay=0.0)
    server.dispatch_pending(100.0)
    finish(server, trainer.id, JobStatus.SUCCEEDED, 200.0)
    groups.stop_auxiliaries(server, 200.0)
    event = {"status": "CANCELLED", "reason": "cancelled by user", "reason_code": "cancelled"}
    server.apply_event(BackendEvent("finished", data.id, event), 201.0)
    record = server.store.load_job(data.id)
    assert record.status is JobStatus.CANCELLED and record.reason_code == "group_done"
    assert record.reason == groups.STOPPED_REASON
    plain = submit(server)
    server.dispatch_pending(300.0)
    server.apply_event(BackendEvent("finished", plain.id, event), 301.0)
    server.record_outcomes(301.0)
    assert server.store.load_job(plain.id).reason_code == "cancelled"


def test_more_tasks_than_executors_fails_at_once_instead_of_waiting(tmp_path: Path) -> None:
    from types import SimpleNamespace

    server = make_server(str(tmp_path), cpus=8, memory=8 * GiB, slots=2)
    server.pool = SimpleNamespace(job_executors=2)
    members = submit_group(server, 3, cpus=0.5)
    server.dispatch_pending(time.time())
    for member in members:
        record = server.store.load_job(member.id)
        assert record.status is JobStatus.FAILED and record.reason_code == "never_fits"
        assert "at most 2 jobs at once" in record.reason
    # Negative control: with three executors the same group starts.
    (tmp_path / "b").mkdir()
    roomy = make_server(str(tmp_path / "b"), cpus=8, memory=8 * GiB, slots=3)
    roomy.pool = SimpleNamespace(job_executors=3)
    started = submit_group(roomy, 3, cpus=0.5)
    roomy.dispatch_pending(time.time())
    assert [status(roomy, m.id) for m in started] == [JobStatus.STARTING] * 3


def test_a_group_larger_than_its_queue_allows_fails_at_once(tmp_path: Path) -> None:
    from dataclasses import replace

    server = make_server(str(tmp_path), cpus=8, memory=8 * GiB, slots=4)
    server.settings = replace(server.settings, queues={"one": 1})
    members = submit_group(server, 2)
    for member in members:
        server.jobs[member.id].queue = "one"
    server.dispatch_pending(time.time())
    record = server.store.load_job(members[0].id)
    assert record.status is JobStatus.FAILED and "queue 'one'" in record.reason, record


def test_group_gpus_start_together_or_never(tmp_path: Path) -> None:
    from sky_mini.server.gpus import GpuPool

    server = make_server(str(tmp_path), cpus=8, memory=8 * GiB, slots=4)
    server.gpu_pool = GpuPool(["NVIDIA H100", "NVIDIA H100"])
    holder = submit(server)
    server.jobs[holder.id].task["resources"].update({"accelerator": "H100", "gpus": 1.0})
    server.dispatch_pending(time.time())
    pair = submit_group(server, 2)
    for member in pair:
        server.jobs[member.id].task["resources"].update({"accelerator": "H100", "gpus": 1.0})
    server.dispatch_pending(time.time())
    # One H100 is free: the first task alone would get it; the group waits, holding none.
    assert [status(server, m.id) for m in pair] == [JobStatus.PENDING] * 2
    assert "H100" in str(server.jobs[pair[1].id].reason)
    assert set(server.gpu_pool.holders) == {holder.id}
    finish(server, holder.id, JobStatus.SUCCEEDED, time.time())
    server.dispatch_pending(time.time())
    assert [status(server, m.id) for m in pair] == [JobStatus.STARTING] * 2
    trio = submit_group(server, 3)
    for member in trio:
        server.jobs[member.id].task["resources"].update({"accelerator": "H100", "gpus": 1.0})
    server.dispatch_pending(time.time())
    record = server.store.load_job(trio[0].id)
    assert record.status is JobStatus.FAILED and "more GPUs at once" in record.reason


def test_exit_code_counts_group_done_as_planned_and_a_user_cancel_not() -> None:
    from sky_mini.client import exit_code_of

    def ended(code: str | None, exit_code: int | None = None) -> JobRecord:
        record = JobRecord(id=1, task={}, name="x", log_path="/dev/null", submitted_at=0.0)
        status = JobStatus.CANCELLED if code != "exit_code" else JobStatus.FAILED
        record.finish(status, now=1.0, reason="r", reason_code=code, exit_code=exit_code)
        return record

    assert exit_code_of(ended("group_done", 143)) == 0
    assert exit_code_of(ended("cancelled")) == 1
    assert exit_code_of(ended("exit_code", 3)) == 3
