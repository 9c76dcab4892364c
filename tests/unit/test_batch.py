"""Batch decisions (retries, schedules, queues, --unique) driven alone, with a fake clock."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from typing import Any

import pytest

from sky_mini.config import load_settings
from sky_mini.errors import SpecError, UsageError
from sky_mini.models import JobRecord, JobStatus
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.schedule import describe_wait, parse_at, parse_in, start_time
from sky_mini.server import batch
from sky_mini.server.backends.base import BackendEvent
from sky_mini.server.main import Capacity, Server
from sky_mini.spec import apply_overrides, load_task, task_from_command
from sky_mini.state import Store, atomic_write_json
from tests.helpers import FakeClock
from tests.unit.test_server_tick import FakeBackend

GiB = 1024**3


def make_server(tmp: Any, clock: FakeClock, *, slots: int = 4, config: str = "") -> Server:
    paths = Paths(os.path.join(str(tmp), "home"))
    ensure_dirs(paths)
    if config:
        with open(paths.config, "w") as handle:
            handle.write(config)
    server = Server(paths, load_settings(paths, env={}), idle_minutes=None, clock=clock)
    server.capacity = Capacity(cpus=float(slots), memory_bytes=4 * GiB)
    server.backend = FakeBackend(slots)
    server.cgroup_caps = None
    return server


def submit(server: Server, *, retries: int = 0, **fields: Any) -> JobRecord:
    resources: dict[str, Any] = {"cpus": 1.0, "memory_bytes": None, "timeout_seconds": None}
    task: dict[str, Any] = {"run": "true", "resources": resources}
    if retries:
        task["retries"] = retries
    record = Store(server.paths).create_job(
        lambda i: JobRecord(
            id=i,
            task=task,
            name=f"j{i}",
            log_path=server.paths.job_log(i),
            submitted_at=server.clock(),
            **fields,
        )
    )
    server.load_new_jobs()
    return record


def finish(server: Server, job_id: int, status: str, exit_code: int | None, **extra: Any) -> None:
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    backend.running.pop(job_id, None)
    data = {"status": status, "exit_code": exit_code, "reason": f"job exited with code {exit_code}"}
    data.update(extra)
    server.apply_event(BackendEvent("finished", job_id, data), server.clock())
    server.record_outcomes(server.clock())  # the tick's step after dispatch


# -- schedules ------------------------------------------------------------------------


def local(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return dt.datetime(year, month, day, hour, minute).timestamp()


def test_at_clock_time_is_the_next_time_the_clock_shows_it() -> None:
    now = local(2026, 12, 1, 22, 1)
    assert parse_at("03:00", now) == local(2026, 12, 2, 3, 0)
    assert parse_at("23:30", now) == local(2026, 12, 1, 23, 30)
    assert describe_wait(parse_at("03:00", now), now) == "scheduled for 03:00 (in 4h 59m)"


def test_at_iso_time_is_local_and_a_past_one_is_returned_as_is() -> None:
    now = local(2026, 12, 1, 22, 1)
    assert parse_at("2026-12-02T03:00", now) == local(2026, 12, 2, 3, 0)
    assert parse_at("2026-11-30T03:00", now) < now  # in the past: the job runs at once
    assert parse_in("10m", now) == now + 600
    assert start_time(None, None, now) is None


@pytest.mark.parametrize(
    ("at", "in_"), [("tomorrow", None), (None, "soon"), ("03:00", "10m"), ("25:00", None)]
)
def test_bad_schedules_are_usage_errors(at: str | None, in_: str | None) -> None:
    with pytest.raises(UsageError):
        start_time(at, in_, time.time())


def test_at_one_minute_ahead_starts_then_and_not_before(tmp_path: Any) -> None:
    clock = FakeClock(local(2026, 12, 1, 2, 59))
    server = make_server(tmp_path, clock)
    record = submit(server, scheduled_at=parse_at("03:00", clock()))
    server.dispatch_pending(clock())
    held = server.jobs[record.id]
    assert held.status is JobStatus.PENDING
    assert held.reason == "scheduled for 03:00 (in 1m)"
    clock.now += 59.5
    server.dispatch_pending(clock())
    assert held.status is JobStatus.PENDING
    assert held.reason == "scheduled for 03:00 (in less than a minute)"
    saved = Store(server.paths).load_job(record.id)
    assert saved is not None and saved.reason == held.reason  # what `jobs queue` shows
    clock.now += 0.5
    server.dispatch_pending(clock())
    assert held.status is JobStatus.STARTING


def test_a_job_scheduled_in_the_past_starts_at_once(tmp_path: Any) -> None:
    clock = FakeClock()
    server = make_server(tmp_path, clock)
    record = submit(server, scheduled_at=clock() - 3600)
    server.dispatch_pending(clock())
    assert server.jobs[record.id].status is JobStatus.STARTING


# -- retries --------------------------------------------------------------------------


def test_backoff_doubles_and_is_capped() -> None:
    assert [batch.backoff_seconds(a, 1.0, 5.0) for a in (1, 2, 3, 4, 5)] == [1, 2, 4, 5, 5]


def test_a_failed_attempt_is_retried_after_its_backoff_with_the_same_id(tmp_path: Any) -> None:
    clock = FakeClock()
    server = make_server(tmp_path, clock)
    record = submit(server, retries=2)
    server.dispatch_pending(clock())
    finish(server, record.id, "FAILED", 1, reason_code="exit_code")
    job = server.jobs[record.id]
    assert job.status is JobStatus.PENDING and job.attempt == 2
    assert job.reason == "retrying (attempt 2 of 3) after: job exited with code 1"
    assert [a["exit_code"] for a in job.attempts] == [1]
    clock.now += 0.9
    server.dispatch_pending(clock())
    assert job.status is JobStatus.PENDING  # 1 s backoff not over
    clock.now += 0.1
    server.dispatch_pending(clock())
    assert job.status is JobStatus.STARTING
    finish(server, record.id, "KILLED", None, reason_code="timeout")
    clock.now += 1.9
    server.dispatch_pending(clock())
    assert job.status is JobStatus.PENDING  # the second backoff is 2 s
    clock.now += 0.1
    server.dispatch_pending(clock())
    finish(server, record.id, "FAILED", 1, reason_code="exit_code")
    assert record.id not in server.jobs  # 3 attempts used: it stays FAILED
    saved = Store(server.paths).load_job(record.id)
    assert saved is not None and saved.status is JobStatus.FAILED and saved.attempt == 3
    assert [a["reason_code"] for a in saved.attempts] == ["exit_code", "timeout", "exit_code"]


@pytest.mark.parametrize(
    ("status", "code"), [("CANCELLED", "cancelled"), ("KILLED", "shutdown"), ("SUCCEEDED", None)]
)
def test_cancel_shutdown_and_success_are_not_retried(
    tmp_path: Any, status: str, code: str | None
) -> None:
    clock = FakeClock()
    server = make_server(tmp_path, clock)
    record = submit(server, retries=3)
    server.dispatch_pending(clock())
    finish(server, record.id, status, None, reason_code=code)
    assert record.id not in server.jobs


def test_a_job_lost_with_its_server_is_retried_by_the_next(tmp_path: Any) -> None:
    clock = FakeClock()
    server = make_server(tmp_path, clock)
    record = submit(server, retries=1)
    server.dispatch_pending(clock())
    server.apply_event(
        BackendEvent("started", record.id, {"phase": "run", "pid": 2**22 + 7}), clock()
    )
    server.write_active_index()
    again = make_server(tmp_path, clock)
    again.reconcile_previous_instance()
    job = again.jobs[record.id]
    assert job.status is JobStatus.PENDING and job.attempt == 2
    assert job.attempts[0]["reason_code"] == "supervisor_lost"
    assert job.reason is not None and job.reason.startswith("retrying (attempt 2 of 2) after:")


# -- queues ---------------------------------------------------------------------------


def test_a_parallel_1_queue_starts_one_job_at_a_time(tmp_path: Any) -> None:
    clock = FakeClock()
    server = make_server(tmp_path, clock, config="queues: {one: {parallel: 1}}\n")
    first, second = submit(server, queue="one"), submit(server, queue="one")
    other = submit(server)
    server.dispatch_pending(clock())
    assert server.jobs[first.id].status is JobStatus.STARTING
    assert server.jobs[second.id].status is JobStatus.PENDING
    assert server.jobs[second.id].reason == "queue one is full: 1/1 of its jobs running"
    assert server.jobs[other.id].status is JobStatus.STARTING  # other jobs are not held
    finish(server, first.id, "SUCCEEDED", 0)
    server.dispatch_pending(clock())
    assert server.jobs[second.id].status is JobStatus.STARTING


def test_a_paused_queue_holds_its_pending_jobs_only(tmp_path: Any) -> None:
    clock = FakeClock()
    server = make_server(tmp_path, clock, config="queues: {a: {}, b: {parallel: 2}}\n")
    atomic_write_json(server.paths.paused, {"all": False, "queues": ["a"]})
    held, free = submit(server, queue="a"), submit(server, queue="b")
    server.dispatch_pending(clock())
    assert server.jobs[held.id].reason is not None
    assert server.jobs[held.id].reason.startswith("queue a paused")  # type: ignore[union-attr]
    assert server.jobs[free.id].status is JobStatus.STARTING
    atomic_write_json(server.paths.paused, {"all": False, "queues": []})
    server.dispatch_pending(clock())
    assert server.jobs[held.id].status is JobStatus.STARTING


@pytest.mark.parametrize(
    "config",
    [
        "queues: [a]\n",
        "queues: {'bad name': {parallel: 1}}\n",
        "queues: {a: {parallel: 0}}\n",
        "queues: {a: {limit: 2}}\n",
        "hooks: {on_failure: 3}\n",
        "hooks: {on_fail: x}\n",
    ],
)
def test_bad_batch_config_names_the_key(tmp_path: Any, config: str) -> None:
    paths = Paths(str(tmp_path))
    with open(paths.config, "w") as handle:
        handle.write(config)
    with pytest.raises(UsageError, match="config.yaml"):
        load_settings(paths, env={})


# -- YAML and flags -------------------------------------------------------------------


def test_job_recovery_and_retries_flag(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "t.yaml")
    with open(path, "w") as handle:
        handle.write("run: 'true'\nresources: {job_recovery: {max_restarts_on_errors: 2}}\n")
    task = load_task(path)
    assert task.retries == 2 and task.to_json()["retries"] == 2
    assert apply_overrides(task, retries=5).retries == 5
    plain = task_from_command(["true"], name=None, cwd=str(tmp_path))
    assert "retries" not in plain.to_json()  # old shape kept
    with open(path, "w") as handle:
        handle.write("run: 'true'\nresources: {job_recovery: {max_restarts_on_errors: -1}}\n")
    with pytest.raises(SpecError, match="job_recovery.max_restarts_on_errors"):
        load_task(path)


# -- --unique ---------------------------------------------------------------------------


@pytest.mark.parametrize("locked", [True, False])
def test_unique_check_and_create_are_one_step(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, locked: bool
) -> None:
    """B submits while A is inside its allocation (after A's check, before A's write).

    Under the lock B waits and then finds A's job; with the check moved out of the lock
    (the negative control) B's check sees nothing and a second job is created.
    """
    import sky_mini.state as state_module

    paths = Paths(os.path.join(str(tmp_path), "home"))
    ensure_dirs(paths)
    results: list[tuple[JobRecord, bool]] = []
    b_at_lock = threading.Event()
    original = state_module.acquire_flock

    def acquire(fd: int, path: str, timeout: float | None) -> None:
        if threading.current_thread().name == "B":
            b_at_lock.set()  # B has done any check it makes before the lock
        original(fd, path, timeout)

    monkeypatch.setattr(state_module, "acquire_flock", acquire)

    def run_b() -> None:
        results.append(Store(paths).create_unique_job("n", build, check_under_lock=locked))

    b = threading.Thread(target=run_b, name="B")

    def build(job_id: int) -> JobRecord:
        if job_id == 1:  # A, holding the lock: let B come to it
            b.start()
            assert b_at_lock.wait(10)
        return JobRecord(id=job_id, task={}, name="n", log_path="", submitted_at=0.0)

    first, first_dedup = Store(paths).create_unique_job("n", build, check_under_lock=locked)
    b.join(10)
    ((second, deduplicated),) = results
    assert not first_dedup and first.id == 1
    if locked:
        assert deduplicated and second.id == first.id
        assert Store(paths).next_id() == 2
    else:
        assert not deduplicated and second.id == 2  # the race the lock prevents


def test_unique_reads_only_unfinished_records(tmp_path: Any) -> None:
    paths = Paths(os.path.join(str(tmp_path), "home"))
    ensure_dirs(paths)
    store = Store(paths)
    for i in range(1, 6):
        status = JobStatus.SUCCEEDED if i < 5 else JobStatus.RUNNING
        store.create_job(
            lambda j, s=status: JobRecord(
                id=j, task={}, name="n", log_path="", submitted_at=0.0, status=s
            )
        )
    store.write_active([5], seen_through=5)
    os.unlink(paths.job_record(1))  # an old record the check must not need
    found = store.find_unfinished("n")
    assert found is not None and found.id == 5


# -- hooks ------------------------------------------------------------------------------


def test_hook_timeout_is_judged_by_the_loops_clock(tmp_path: Any) -> None:
    from sky_mini.server.hooks import HookRunner

    runner = HookRunner(
        on_failure="exec sleep 100",
        on_finish=None,
        timeout=30.0,
        log_path=os.path.join(str(tmp_path), "hooks.log"),
        marker_prefix="test-hooks",
    )
    job = JobRecord(id=3, task={}, name="n", log_path="", submitted_at=0.0, status=JobStatus.FAILED)
    runner.job_ended(job, now=1000.0)
    (pid,) = runner.pids()
    runner.enforce_timeouts(1029.9)
    assert not runner.running[pid].killed  # not yet: the deadline is 1030
    runner.enforce_timeouts(1030.0)
    _, status = os.waitpid(pid, 0)  # what the server's reap_children does
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    assert runner.child_exited(pid, status) and runner.pids() == []
    success = JobRecord(
        id=4, task={}, name="n", log_path="", submitted_at=0.0, status=JobStatus.SUCCEEDED
    )
    runner.job_ended(success, now=1000.0)
    assert runner.pids() == []  # on_failure only runs for failures
