"""How often the server writes while a queue drains: fewer writes, same facts on disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from sky_mini.config import Settings
from sky_mini.models import JobRecord, JobStatus
from sky_mini.server import publish
from sky_mini.server.backends.base import BackendEvent
from sky_mini.state import Store
from tests.helpers import FakeClock
from tests.unit.test_server_tick import FakeBackend, GiB, make_server


def builder(server: Any) -> Callable[[int], JobRecord]:
    return lambda i: JobRecord(
        id=i,
        task={"run": "true", "resources": {"cpus": 1.0, "memory_bytes": None}},
        name=f"j{i}",
        log_path=server.paths.job_log(i),
        submitted_at=server.clock(),
    )


def submit_now(server: Any) -> JobRecord:
    record = Store(server.paths).create_job(builder(server))
    server.load_new_jobs()
    return record


def count_saves(server: Any, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The durability of every record write the server makes from now on."""
    writes: list[bool] = []
    real = server.store.save_job

    def save(record: JobRecord, *, durable: bool = True) -> None:
        writes.append(durable)
        real(record, durable=durable)

    def save_many(records: list[JobRecord]) -> None:
        writes.extend(True for _ in records)
        real_many(records)

    real_many = server.store.save_jobs
    monkeypatch.setattr(server.store, "save_job", save)
    monkeypatch.setattr(server.store, "save_jobs", save_many)
    return writes


STARTED = {"phase": "run", "pid": 4242, "pgid": 4242, "create_time": 1.0, "executor": "job-0"}
FINISHED = {"status": "SUCCEEDED", "exit_code": 0}


def one_dispatched(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, JobRecord, FakeBackend, list[bool]]:
    """A one-slot server that has just dispatched one job, its saves counted from here."""
    server = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1, clock=FakeClock())
    job = submit_now(server)
    server.dispatch_pending(server.clock())
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    return server, job, backend, count_saves(server, monkeypatch)


def test_a_job_that_starts_and_ends_within_one_poll_is_written_once_durably(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, job, backend, writes = one_dispatched(tmp_path, monkeypatch)
    backend.events = [
        BackendEvent("started", job.id, STARTED),
        BackendEvent("finished", job.id, FINISHED),
    ]
    server.handle_backend_events(server.clock())
    assert writes == []  # held until this tick's dispatch is done
    server.record_outcomes(server.clock())
    assert writes == [True]
    stored = Store(server.paths).load_job(job.id)
    assert stored is not None and stored.status is JobStatus.SUCCEEDED
    assert stored.pid == 4242  # the start's facts are in the one write


def started_lines(server: Any) -> list[str]:
    with open(server.paths.start_log) as handle:
        return handle.read().splitlines()


def test_a_start_alone_is_written_once_the_job_has_run_a_moment(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, job, backend, writes = one_dispatched(tmp_path, monkeypatch)
    server.record_outcomes(server.clock())
    assert writes == []  # the start is in the start log instead (startlog)
    assert started_lines(server) == [f"{job.id} 1"]
    backend.events = [BackendEvent("started", job.id, STARTED)]
    server.handle_backend_events(server.clock())
    server.record_outcomes(server.clock())
    assert writes == []  # RUNNING waits a moment: a job that ends sooner is written once
    server.status_dirty = server.active_dirty = False  # nothing else due: the loop wakes
    assert server.next_timeout() == pytest.approx(publish.START_WRITE_DELAY_SECONDS)  # to write
    server.clock.now += publish.START_WRITE_DELAY_SECONDS
    assert server.next_timeout() == 0
    server.record_outcomes(server.clock())
    assert writes == [False]
    stored = Store(server.paths).load_job(job.id)
    assert stored is not None and stored.status is JobStatus.RUNNING and stored.pid == 4242


def test_a_job_that_ends_within_the_moment_is_written_once_durably(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, job, backend, writes = one_dispatched(tmp_path, monkeypatch)
    server.record_outcomes(server.clock())
    backend.events = [BackendEvent("started", job.id, STARTED)]
    server.handle_backend_events(server.clock())
    server.record_outcomes(server.clock())
    server.clock.now += publish.START_WRITE_DELAY_SECONDS / 2
    backend.events = [BackendEvent("finished", job.id, FINISHED)]
    server.handle_backend_events(server.clock())
    server.record_outcomes(server.clock())
    server.clock.now += publish.START_WRITE_DELAY_SECONDS
    server.record_outcomes(server.clock())
    assert writes == [True]  # the end, with the start's facts
    stored = Store(server.paths).load_job(job.id)
    assert stored is not None and stored.status is JobStatus.SUCCEEDED and stored.pid == 4242


@pytest.mark.parametrize("log_kept", [True, False])
def test_a_server_that_dies_before_a_started_job_is_written_never_runs_it_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, log_kept: bool
) -> None:
    server, job, backend, writes = one_dispatched(tmp_path, monkeypatch)
    backend.events = [BackendEvent("started", job.id, STARTED)]
    server.handle_backend_events(server.clock())
    server.write_active_index(force=True)
    on_disk = Store(server.paths).load_job(job.id)
    assert on_disk is not None and on_disk.status is JobStatus.PENDING  # killed -9 here
    if not log_kept:  # negative control: without the start log the job would run again
        os.unlink(server.paths.start_log)
    fresh = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1, clock=FakeClock())
    fresh.cgroup_caps = None
    fresh.settings = Settings(disabled=frozenset({"sweep"}))
    fresh.reconcile_previous_instance()
    stored = Store(fresh.paths).load_job(job.id)
    assert stored is not None
    if log_kept:
        assert stored.status is JobStatus.KILLED and stored.reason_code == "supervisor_lost"
        assert job.id not in fresh.jobs
    else:
        assert stored.status is JobStatus.PENDING and job.id in fresh.jobs


def test_a_retry_of_a_logged_start_is_still_adopted_as_pending(tmp_path: Any) -> None:
    server = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1, clock=FakeClock())
    job = submit_now(server)
    server.dispatch_pending(server.clock())
    record = server.jobs[job.id]
    record.status, record.attempt = JobStatus.PENDING, 2  # requeued: its next attempt
    Store(server.paths).save_job(record)
    server.write_active_index(force=True)
    fresh = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1, clock=FakeClock())
    fresh.cgroup_caps = None
    fresh.settings = Settings(disabled=frozenset({"sweep"}))
    fresh.reconcile_previous_instance()
    assert job.id in fresh.jobs and fresh.jobs[job.id].status is JobStatus.PENDING


def test_a_waiting_reason_is_written_once_the_job_has_waited(tmp_path: Any) -> None:
    clock = FakeClock()
    server = make_server(str(tmp_path), cpus=4.0, memory=GiB(8), slots=1, clock=clock)
    submit_now(server)
    waiting = submit_now(server)
    server.dispatch_pending(clock())
    reason = "waiting for a free executor: all are busy"
    assert server.jobs[waiting.id].reason == reason  # shown by the server at once
    on_disk = Store(server.paths).load_job(waiting.id)
    assert on_disk is not None and on_disk.reason is None
    clock.now += publish.NOTE_WAITING_AFTER_SECONDS
    server.dispatch_pending(clock())
    on_disk = Store(server.paths).load_job(waiting.id)
    assert on_disk is not None and on_disk.reason == reason


def test_status_writes_are_paced_while_a_queue_drains_and_the_loop_wakes_for_the_held_one(
    tmp_path: Any,
) -> None:
    clock = FakeClock()
    server = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1, clock=clock)
    submit_now(server)
    submit_now(server)
    server.dispatch_pending(clock())  # one runs, one is PENDING: a queue draining
    server.write_status(force=True)
    written = os.stat(server.paths.server_status).st_mtime_ns
    os.utime(server.paths.server_status, ns=(0, 0))
    server.status_dirty = True
    server.write_status()
    assert os.stat(server.paths.server_status).st_mtime_ns == 0  # held back
    assert server.next_timeout() <= publish.STATUS_MIN_INTERVAL_SECONDS
    clock.now += publish.STATUS_MIN_INTERVAL_SECONDS
    server.write_status()
    assert os.stat(server.paths.server_status).st_mtime_ns != 0
    assert not server.status_dirty
    assert written


def test_with_nothing_pending_a_status_change_is_written_at_once(tmp_path: Any) -> None:
    clock = FakeClock()
    server = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1, clock=clock)
    submit_now(server)
    server.dispatch_pending(clock())  # it runs; nothing waits behind it
    server.write_status(force=True)
    os.utime(server.paths.server_status, ns=(0, 0))
    server.status_dirty = True
    server.write_status()
    assert os.stat(server.paths.server_status).st_mtime_ns != 0
    assert not server.status_dirty


def test_outcomes_of_one_tick_share_one_directory_fsync_and_come_before_the_hooks(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sky_mini.state

    server = make_server(str(tmp_path), cpus=2.0, memory=GiB(2), slots=2, clock=FakeClock())
    jobs = [submit_now(server), submit_now(server)]
    server.dispatch_pending(server.clock())
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    events: list[str] = []
    real_fsync_dir = sky_mini.state.fsync_dir

    def fsync_dir(path: str) -> None:
        events.append("fsync_dir")
        real_fsync_dir(path)

    def job_ended(record: JobRecord, now: float) -> None:
        on_disk = Store(server.paths).load_job(record.id)
        assert on_disk is not None and on_disk.status is JobStatus.SUCCEEDED
        events.append(f"told {record.id}")

    monkeypatch.setattr(sky_mini.state, "fsync_dir", fsync_dir)
    monkeypatch.setattr(server.hooks, "job_ended", job_ended)
    for job in jobs:
        backend.running.pop(job.id)
    backend.events = [BackendEvent("finished", j.id, FINISHED) for j in jobs]
    server.handle_backend_events(server.clock())
    assert events == []
    server.record_outcomes(server.clock())
    assert events == ["fsync_dir", f"told {jobs[0].id}", f"told {jobs[1].id}"]


def test_a_job_after_another_starts_once_that_outcome_is_durable(tmp_path: Any) -> None:
    server = make_server(str(tmp_path), cpus=2.0, memory=GiB(2), slots=2, clock=FakeClock())
    first = submit_now(server)
    second = Store(server.paths).create_job(
        lambda i: JobRecord(
            id=i,
            task={"run": "true", "resources": {"cpus": 1.0, "memory_bytes": None}},
            name="second",
            log_path=server.paths.job_log(i),
            submitted_at=server.clock(),
            after=[first.id],
        )
    )
    server.load_new_jobs()
    server.dispatch_pending(server.clock())
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    backend.running.pop(first.id)
    backend.events = [BackendEvent("finished", first.id, FINISHED)]
    server.handle_backend_events(server.clock())
    server.dispatch_pending(server.clock())
    # Its dependency's SUCCEEDED is not on disk yet: a crash now must not have run it.
    assert server.jobs[second.id].status is JobStatus.PENDING
    server.record_outcomes(server.clock())
    assert server.next_timeout() == 0.0  # the loop comes straight back to dispatch it
    server.dispatch_pending(server.clock())
    assert server.jobs[second.id].status is JobStatus.STARTING


@pytest.mark.parametrize("log_writable", [True, False])
def test_each_start_is_logged_before_its_executor_has_the_job(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, log_writable: bool
) -> None:
    server = make_server(str(tmp_path), cpus=2.0, memory=GiB(2), slots=2, clock=FakeClock())
    jobs = [submit_now(server), submit_now(server)]
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    order: list[str] = []
    real_launch = backend.launch
    real_save = server.store.save_job
    real_note = server.start_log.note

    def launch(job: JobRecord, payload: dict[str, Any]) -> str:
        order.append(f"launch {job.id}")
        return real_launch(job, payload)

    def save(record: JobRecord, *, durable: bool = True) -> None:
        order.append(f"write {record.id} {record.status.value} durable={durable}")
        real_save(record, durable=durable)

    def note(job_id: int, attempt: int) -> bool:
        order.append(f"log {job_id}")
        return real_note(job_id, attempt) if log_writable else False

    monkeypatch.setattr(backend, "launch", launch)
    monkeypatch.setattr(server.store, "save_job", save)
    monkeypatch.setattr(server.start_log, "note", note)
    server.dispatch_pending(server.clock())
    server.record_outcomes(server.clock())
    a, b = (j.id for j in jobs)
    expected = [f"log {a}", f"launch {a}", f"log {b}", f"launch {b}"]
    if not log_writable:  # a full disk: each record says STARTING once both have their job
        expected += [f"write {a} STARTING durable=False", f"write {b} STARTING durable=False"]
    assert order == expected


def test_a_new_record_wakes_the_server_once_readable_and_before_its_directory_fsync(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sky_mini.state

    server = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1, clock=FakeClock())
    store = Store(server.paths)
    events: list[str] = []
    real_fsync_dir = sky_mini.state.fsync_dir

    def fsync_dir(path: str) -> None:
        events.append("fsync_dir")
        real_fsync_dir(path)

    def woken() -> None:
        # What the server's load_new_jobs does on a wake-up: the record is there to adopt,
        # although the counter has not moved yet.
        events.append(f"wake next_id={store.next_id()}")
        server.load_new_jobs()

    monkeypatch.setattr(sky_mini.state, "fsync_dir", fsync_dir)
    record = store.create_job(builder(server), woken)
    assert events == ["wake next_id=2", "fsync_dir"]
    assert record.id in server.jobs  # adopted from the wake-up alone


def test_outcomes_wait_briefly_for_news_already_waiting_then_share_one_pass(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(str(tmp_path), cpus=2.0, memory=GiB(2), slots=2, clock=FakeClock())
    first, second = submit_now(server), submit_now(server)
    server.dispatch_pending(server.clock())
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    passes: list[list[int]] = []
    real_many = server.store.save_jobs

    def save_many(records: list[JobRecord]) -> None:
        passes.append([r.id for r in records])
        real_many(records)

    monkeypatch.setattr(server.store, "save_jobs", save_many)
    news = [True]  # the other executor's message is already readable
    monkeypatch.setattr(server, "events_waiting", lambda: news[0])
    backend.events = [BackendEvent("finished", first.id, FINISHED)]
    server.handle_backend_events(server.clock())
    server.record_outcomes(server.clock())
    assert passes == []  # held for the news
    server.status_dirty = server.active_dirty = False
    assert server.next_timeout() == pytest.approx(publish.OUTCOME_BATCH_SECONDS)
    server.clock.now += publish.OUTCOME_BATCH_SECONDS / 4
    backend.events = [BackendEvent("finished", second.id, FINISHED)]
    server.handle_backend_events(server.clock())
    news[0] = False
    server.record_outcomes(server.clock())
    assert passes == [[first.id, second.id]]  # one pass of fsyncs for both


def test_outcomes_wait_for_news_no_longer_than_the_bound(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, job, backend, writes = one_dispatched(tmp_path, monkeypatch)
    monkeypatch.setattr(server, "events_waiting", lambda: True)  # news, forever
    backend.events = [BackendEvent("finished", job.id, FINISHED)]
    server.handle_backend_events(server.clock())
    server.record_outcomes(server.clock())
    assert writes == []
    server.clock.now += publish.OUTCOME_BATCH_SECONDS
    server.record_outcomes(server.clock())
    assert writes == [True]  # written once the wait is up, news or not


def test_a_job_whose_end_is_not_on_disk_yet_stays_in_the_active_index(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the torture run: the index dropped a job whose outcome waited for its pass
    of fsyncs; the server was killed; the next one never looked at the job again."""
    server, job, backend, writes = one_dispatched(tmp_path, monkeypatch)
    monkeypatch.setattr(server, "events_waiting", lambda: True)
    backend.events = [
        BackendEvent("started", job.id, STARTED),
        BackendEvent("finished", job.id, FINISHED),
    ]
    server.handle_backend_events(server.clock())
    server.record_outcomes(server.clock())
    assert writes == []  # the outcome waits
    server.write_active_index(force=True)
    active, _ = Store(server.paths).read_active()
    assert job.id in active
    # Killed -9 here: the next server finds the job and reconciles it.
    fresh = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1, clock=FakeClock())
    fresh.cgroup_caps = None
    fresh.settings = Settings(disabled=frozenset({"sweep"}))
    fresh.reconcile_previous_instance()
    stored = Store(fresh.paths).load_job(job.id)
    assert stored is not None and stored.reason_code == "supervisor_lost"


def test_a_job_leaves_the_active_index_once_its_end_is_durable(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, job, backend, writes = one_dispatched(tmp_path, monkeypatch)
    backend.events = [BackendEvent("finished", job.id, FINISHED)]
    server.handle_backend_events(server.clock())
    server.record_outcomes(server.clock())
    assert writes == [True]
    assert server.active_dirty
    server.write_active_index(force=True)
    active, _ = Store(server.paths).read_active()
    assert job.id not in active
