"""The server's tick steps driven alone, with a fake backend and a fake clock."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sky_mini.config import Settings
from sky_mini.models import JobRecord, JobStatus
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.server.backends.base import BackendEvent
from sky_mini.server.main import Capacity, Server
from sky_mini.state import Store
from tests.helpers import FakeClock as Clock

MiB = 1024 * 1024


class FakeBackend:
    name = "fake"

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running: dict[int, str] = {}
        self.stops: list[tuple[int, str]] = []
        self.events: list[BackendEvent] = []
        self.offered: list[int] = []
        self.still_known: set[int] = set()  # what reattach takes back (a cluster's jobs)

    def owns(self, record: JobRecord) -> bool:
        return True

    def start(self) -> None: ...

    def reattach(self, records: list[JobRecord]) -> list[int]:
        self.offered = [r.id for r in records]
        return [r.id for r in records if r.id in self.still_known]

    def filenos(self) -> list[int]:
        return []

    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def launch(self, job: JobRecord, payload: dict[str, Any]) -> str:
        assert self.free_slots() > 0
        self.running[job.id] = f"fake-{job.id}"
        return self.running[job.id]

    def stop(self, job_id: int, reason: str, grace: float) -> None:
        self.stops.append((job_id, reason))

    def poll(self) -> list[BackendEvent]:
        events, self.events = self.events, []
        return events

    def child_exited(self, pid: int, status: int) -> list[BackendEvent]:
        return []

    def maintain(self) -> list[str]:
        return []

    def components(self) -> list[dict[str, Any]]:
        return []

    def shutdown(self, grace: float) -> None: ...

    def is_stopped(self) -> bool:
        return True


def make_server(tmp: str, *, cpus: float, memory: int, slots: int, **kw: Any) -> Server:
    paths = Paths(os.path.join(tmp, "home"))
    ensure_dirs(paths)
    clock = kw.pop("clock", Clock())
    server = Server(paths, Settings(), idle_minutes=kw.pop("idle_minutes", None), clock=clock)
    server.capacity = Capacity(cpus=cpus, memory_bytes=memory)
    server.backend = FakeBackend(slots)
    return server


def submit(
    server: Server, cpus: float = 1.0, memory: int | None = None, *, defaulted: bool = False
) -> JobRecord:
    resources = {
        "cpus": cpus,
        "cpus_defaulted": defaulted,
        "memory_bytes": memory,
        "timeout_seconds": None,
    }
    store = Store(server.paths)
    record = store.create_job(
        lambda i: JobRecord(
            id=i,
            task={"run": "true", "resources": resources},
            name=f"j{i}",
            log_path=server.paths.job_log(i),
            submitted_at=time.time(),
        )
    )
    server.load_new_jobs()
    return record


job_shapes = st.lists(
    st.tuples(st.sampled_from([0.25, 0.5, 1.0, 2.0]), st.sampled_from([None, 64, 512, 1024])),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    shapes=job_shapes,
    cpus=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    memory_mib=st.sampled_from([256, 1024, 4096]),
    slots=st.integers(min_value=1, max_value=4),
)
def test_no_job_stays_pending_while_a_slot_is_idle_and_it_fits(
    tmp_path_factory: pytest.TempPathFactory,
    shapes: list[tuple[float, int | None]],
    cpus: float,
    memory_mib: int,
    slots: int,
) -> None:
    server = make_server(
        str(tmp_path_factory.mktemp("s")), cpus=cpus, memory=memory_mib * MiB, slots=slots
    )
    for job_cpus, job_mem in shapes:
        submit(server, job_cpus, job_mem * MiB if job_mem else None)
    server.dispatch_pending(server.clock())
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    for record in server.jobs.values():
        if record.status is not JobStatus.PENDING:
            continue
        need_cpus = record.task["resources"]["cpus"]
        need_mem = record.task["resources"]["memory_bytes"] or 0
        fits = server.capacity.fits_now(need_cpus, need_mem)
        assert not (backend.free_slots() > 0 and fits), record
        assert record.reason and record.reason.startswith("waiting for")
    # Never more reserved than the machine has.
    assert server.capacity.used_cpus <= cpus + 1e-9
    assert server.capacity.used_memory <= memory_mib * MiB
    # Jobs that can never fit are failed, not left pending forever.
    for job_id in range(1, len(shapes) + 1):
        record = Store(server.paths).load_job(job_id)
        assert record is not None
        if record.task["resources"]["cpus"] > cpus:
            assert record.status is JobStatus.FAILED and record.reason_code == "never_fits"


def test_waiting_reason_names_the_holder(tmp_path: Any) -> None:
    server = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=2)
    first = submit(server)
    second = submit(server)
    server.dispatch_pending(server.clock())
    assert server.jobs[first.id].status is JobStatus.STARTING
    assert server.jobs[second.id].reason == "waiting for 1 CPU: 1/1 in use by job 1"


def GiB(n: int) -> int:  # noqa: N802
    return n * 1024**3


def test_finished_event_frees_the_reservation_and_the_next_job_starts(tmp_path: Any) -> None:
    server = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1)
    first, second = submit(server), submit(server)
    server.dispatch_pending(server.clock())
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    del backend.running[first.id]
    server.apply_event(
        BackendEvent(
            "finished",
            first.id,
            {
                "status": "KILLED",
                "reason": "out of memory",
                "reason_code": "memory_limit",
                "exit_code": 137,
            },
        ),
        server.clock(),
    )
    server.dispatch_pending(server.clock())
    assert server.jobs[second.id].status is JobStatus.STARTING
    # The next job was handed out before the outcome's durable write (record_outcomes).
    stored = Store(server.paths).load_job(first.id)
    assert stored is not None and not stored.status.is_terminal
    server.record_outcomes(server.clock())
    stored = Store(server.paths).load_job(first.id)
    assert stored is not None and stored.status is JobStatus.KILLED
    assert stored.reason_code == "memory_limit"


def test_cancel_intent_on_pending_and_running_jobs(tmp_path: Any) -> None:
    server = make_server(str(tmp_path), cpus=1.0, memory=GiB(2), slots=1)
    running, pending = submit(server), submit(server)
    server.dispatch_pending(server.clock())
    store = Store(server.paths)
    store.add_intent("cancel", pending.id)
    store.add_intent("cancel", running.id)
    server.handle_intents(server.clock())
    record = store.load_job(pending.id)
    assert record is not None and record.status is JobStatus.CANCELLED
    assert record.started_at is None
    backend = server.backend
    assert isinstance(backend, FakeBackend)
    assert backend.stops == [(running.id, "cancel")]
    assert store.take_intents() == []


def test_autostop_at_idle_minutes_not_before(tmp_path: Any) -> None:
    clock = Clock()
    server = make_server(
        str(tmp_path), cpus=1, memory=GiB(1), slots=1, idle_minutes=10, clock=clock
    )
    server.idle_since = None
    server.check_autostop(clock())
    clock.now += 10 * 60 - 1
    server.check_autostop(clock())
    assert server.stop_requested is None
    clock.now += 1
    server.check_autostop(clock())
    assert server.stop_requested == "idle"


def test_work_resets_the_idle_countdown(tmp_path: Any) -> None:
    clock = Clock()
    server = make_server(
        str(tmp_path), cpus=1, memory=GiB(1), slots=1, idle_minutes=10, clock=clock
    )
    server.check_autostop(clock())
    clock.now += 9 * 60
    submit(server)
    server.check_autostop(clock())
    assert server.idle_since is None
    clock.now += 5 * 60
    server.check_autostop(clock())
    assert server.stop_requested is None


def test_foreground_server_without_idle_minutes_never_idles_out(tmp_path: Any) -> None:
    clock = Clock()
    server = make_server(str(tmp_path), cpus=1, memory=GiB(1), slots=1, clock=clock)
    server.check_autostop(clock())
    clock.now += 365 * 86400
    server.check_autostop(clock())
    assert server.stop_requested is None


def test_restart_marks_running_jobs_lost_and_keeps_pending(tmp_path: Any) -> None:
    server = make_server(str(tmp_path), cpus=1, memory=GiB(1), slots=1)
    running, pending = submit(server), submit(server)
    server.dispatch_pending(server.clock())
    record = server.jobs[running.id]
    record.status = JobStatus.RUNNING
    Store(server.paths).save_job(record)
    server.write_active_index()
    fresh = make_server(str(tmp_path), cpus=1, memory=GiB(1), slots=1)
    fresh.cgroup_caps = None
    fresh.settings = Settings(disabled=frozenset({"sweep"}))
    fresh.reconcile_previous_instance()
    lost = Store(fresh.paths).load_job(running.id)
    assert lost is not None and lost.status is JobStatus.KILLED
    assert lost.reason_code == "supervisor_lost"
    assert list(fresh.jobs) == [pending.id]


def test_restart_keeps_the_jobs_a_backend_reattaches(tmp_path: Any) -> None:
    """The seam for a cluster backend: work it still runs survives the server's restart."""
    server = make_server(str(tmp_path), cpus=2, memory=GiB(1), slots=2)
    kept, lost = submit(server), submit(server)
    server.dispatch_pending(server.clock())
    for job_id in (kept.id, lost.id):
        server.jobs[job_id].status = JobStatus.RUNNING
        Store(server.paths).save_job(server.jobs[job_id])
    server.write_active_index()
    fresh = make_server(str(tmp_path), cpus=2, memory=GiB(1), slots=2)
    fresh.cgroup_caps = None
    fresh.settings = Settings(disabled=frozenset({"sweep"}))
    backend = fresh.backend
    assert isinstance(backend, FakeBackend)
    backend.still_known = {kept.id}
    fresh.reconcile_previous_instance()
    assert backend.offered == [kept.id, lost.id]
    store = Store(fresh.paths)
    assert store.load_job(kept.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert store.load_job(lost.id).reason_code == "supervisor_lost"  # type: ignore[union-attr]
    assert list(fresh.jobs) == [kept.id]
    assert fresh.capacity.holders == {kept.id: (1.0, 0)}  # its reservation is held again


def test_a_job_recorded_while_the_server_reconciles_its_start_is_adopted(tmp_path: Any) -> None:
    """100 cron CLIs racing a cold start: one records a job while the new server is still
    looking at the records it found. That job must run (CI once saw it left PENDING)."""
    server = make_server(str(tmp_path), cpus=1, memory=GiB(1), slots=1)
    server.cgroup_caps = None
    server.settings = Settings(disabled=frozenset({"sweep"}))
    early = submit(server)
    store_load = server.store.load_job
    late: list[JobRecord] = []

    def load_while_a_cli_submits(job_id: int) -> JobRecord | None:
        if not late:  # a racing CLI records its job between the server's reads
            late.append(submit_record(server.paths))
        return store_load(job_id)

    server.store.load_job = load_while_a_cli_submits  # type: ignore[method-assign]
    server.reconcile_previous_instance()
    server.store.load_job = store_load  # type: ignore[method-assign]
    server.load_new_jobs()
    assert sorted(server.jobs) == [early.id, late[0].id]


def submit_record(paths: Paths) -> JobRecord:
    return Store(paths).create_job(
        lambda i: JobRecord(
            id=i, task={"run": "true"}, name="racing", log_path=paths.job_log(i), submitted_at=0.0
        )
    )


def test_work_arriving_during_an_idle_stop_is_noticed(tmp_path: Any) -> None:
    clock = Clock()
    server = make_server(str(tmp_path), cpus=1, memory=GiB(1), slots=1, idle_minutes=0, clock=clock)
    server.check_autostop(clock())
    assert server.stop_requested == "idle"
    assert not server.work_arrived()
    # A CLI that saw the server still up records a job and wakes it; dispatch is closed.
    submit_record(server.paths)
    assert server.work_arrived()


def test_default_cpu_jobs_run_one_at_a_time_on_a_half_cpu_box(tmp_path: Any) -> None:
    server = make_server(str(tmp_path), cpus=0.5, memory=GiB(1), slots=1)
    first, second = submit(server, defaulted=True), submit(server, defaulted=True)
    explicit = submit(server, cpus=1.0)
    server.dispatch_pending(server.clock())
    assert server.jobs[first.id].status is JobStatus.STARTING
    assert server.capacity.used_cpus == 0.5  # min(1, machine CPUs)
    assert server.jobs[second.id].status is JobStatus.PENDING
    stored = Store(server.paths).load_job(explicit.id)
    assert stored is not None and stored.reason_code == "never_fits"
    assert stored.reason is not None and "at most 0.5 CPU" in stored.reason
