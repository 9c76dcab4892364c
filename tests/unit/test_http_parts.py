"""The http component's parts alone: listen addresses, the gate, the exposition format."""

from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sky_mini.config import parse_listen
from sky_mini.http.auth import Gate, ensure_token, is_loopback
from sky_mini.http.metrics import render_metrics
from sky_mini.http.reader import JobIndex, JobSummary
from sky_mini.models import JobRecord, JobStatus
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.state import Store


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8765", ("127.0.0.1", 8765)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:80", ("localhost", 80)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ],
)
def test_parse_listen_accepts(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8765", ":8765", "host:", "h:65536", "h:８０", "a b:1", "[::1:"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_loopback_needs_the_right_host_and_no_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    gate = Gate("127.0.0.1", 8765, None)
    assert gate.check("127.0.0.1:8765", None, None) == "ok"
    assert gate.check("LOCALHOST:8765", None, None) == "ok"
    assert gate.check("attacker.example:8765", None, None) == "bad_host"
    assert gate.check(None, None, None) == "bad_host"


def test_off_loopback_the_token_is_required(tmp_path: os.PathLike[str]) -> None:
    home = str(tmp_path)
    token, warning = ensure_token(home)
    assert warning is None and len(token) >= 32
    assert ensure_token(home)[0] == token  # created once, then read
    os.chmod(os.path.join(home, "http.token"), 0o644)
    assert "0600" in str(ensure_token(home)[1])
    gate = Gate("0.0.0.0", 80, token)
    assert gate.check("anything", None, None) == "unauthorized"
    assert gate.check("anything", f"Bearer {token}x", None) == "unauthorized"
    assert gate.check("anything", f"Bearer {token}", None) == "ok"
    assert gate.check("anything", None, f"a=b; sky_mini_token={token}") == "ok"


def summary(job_id: int, status: JobStatus, **kw: object) -> JobSummary:
    fields: dict[str, object] = {
        "reason_code": None,
        "executor": None,
        "duration": None,
        "peak_memory_bytes": None,
        "finished_at": None,
    }
    fields.update(kw)
    return JobSummary(id=job_id, status=status, **fields)  # type: ignore[arg-type]


def test_exposition_parses_and_escapes_label_values(tmp_path: os.PathLike[str]) -> None:
    jobs = [
        summary(1, JobStatus.SUCCEEDED, duration=0.5, peak_memory_bytes=2**20),
        summary(2, JobStatus.KILLED, reason_code="memory_limit", duration=90.0),
        summary(3, JobStatus.PENDING),
    ]
    services = {
        "services": [
            {
                "name": 'we"b\\x',
                "status": "READY",
                "ready_replicas": 1,
                "total_replicas": 2,
                "replicas": [{"restarts": 2}, {"restarts": 1}],
            }
        ],
        "controller": {"running": True},
    }
    status = {"components": [{"kind": "job-executor", "state": "busy"}], "backend": "local"}
    text = render_metrics(Paths(str(tmp_path)), jobs, status, services)
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("sky_mini_queue_depth", ())] == 1
    assert found[("sky_mini_jobs_killed", (("reason_code", "memory_limit"),))] == 1
    assert found[("sky_mini_job_duration_seconds_bucket", (("le", "1.0"),))] == 1
    assert found[("sky_mini_job_duration_seconds_bucket", (("le", "300.0"),))] == 2
    assert found[("sky_mini_job_duration_seconds_sum", ())] == 90.5
    assert found[("sky_mini_service_replica_restarts", (("service", 'we"b\\x'),))] == 3
    assert found[("sky_mini_executors", (("state", "busy"),))] == 1
    assert found[("sky_mini_services_controller_up", ())] == 1
    assert ("sky_mini_slurm_controller_reachable", ()) not in found  # only with Slurm


def test_job_index_reads_a_finished_record_once(tmp_path: os.PathLike[str]) -> None:
    paths = Paths(os.path.join(str(tmp_path), "home"))
    ensure_dirs(paths)
    store = Store(paths)
    record = JobRecord(1, {}, "a", paths.job_log(1), 1.0, status=JobStatus.SUCCEEDED)
    store.save_job(record)
    index = JobIndex(paths)
    assert [s.status for s in index.refresh()] == [JobStatus.SUCCEEDED]
    with open(paths.job_record(1), "w") as handle:
        handle.write("{damaged")  # a finished record is not read again...
    assert [s.id for s in index.refresh()] == [1]
    os.unlink(paths.job_record(1))  # ...but a pruned one disappears
    assert index.refresh() == []
    with open(paths.job_record(2), "w") as handle:
        handle.write("{damaged")
    assert index.refresh() == []
    assert os.path.exists(paths.job_record(2))  # skipped, never quarantined
