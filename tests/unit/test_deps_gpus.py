"""Dependency gating and the GPU pool, driven through the server's tick steps with fakes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from sky_mini.gpus import GpuOverrideError, gpu_matches, parse_override
from sky_mini.jobsecrets import write_secrets
from sky_mini.models import JobRecord, JobStatus
from sky_mini.server.gpus import GpuPool
from sky_mini.state import Store
from tests.unit.test_server_tick import FakeBackend, make_server

GiB = 1024**3


class RecordingBackend(FakeBackend):
    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self.payloads: dict[int, dict[str, Any]] = {}

    def launch(self, job: JobRecord, payload: dict[str, Any]) -> str:
        self.payloads[job.id] = payload
        return super().launch(job, payload)


def submit(server: Any, *, after: list[int] | None = None, **task: Any) -> JobRecord:
    resources = {"cpus": 1.0, "memory_bytes": None, "timeout_seconds": None}
    resources.update(task.pop("resources", {}))
    record = Store(server.paths).create_job(
        lambda i: JobRecord(
            id=i,
            task={"run": "true", "resources": resources, **task},
            name=f"j{i}",
            log_path=server.paths.job_log(i),
            submitted_at=time.time(),
            after=after or [],
        )
    )
    server.load_new_jobs()
    return record


def finish(server: Any, job_id: int, status: JobStatus) -> None:
    from sky_mini.server.backends.base import BackendEvent

    server.apply_event(BackendEvent("finished", job_id, {"status": status.value}), time.time())
    server.record_outcomes(time.time())  # the tick's step after dispatch
    assert isinstance(server.backend, FakeBackend)
    server.backend.running.pop(job_id, None)


def test_after_waits_then_runs(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=4, memory=4 * GiB, slots=4)
    first = submit(server)
    second = submit(server, after=[first.id])
    server.dispatch_pending(time.time())
    assert server.jobs[second.id].status is JobStatus.PENDING
    assert server.jobs[second.id].reason == f"waiting for job {first.id}"
    finish(server, first.id, JobStatus.SUCCEEDED)
    server.dispatch_pending(time.time())
    assert server.jobs[second.id].status is JobStatus.STARTING


def test_a_failure_cancels_the_chain_naming_the_first_failure(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=4, memory=4 * GiB, slots=4)
    first = submit(server)
    second = submit(server, after=[first.id])
    third = submit(server, after=[second.id])
    server.dispatch_pending(time.time())
    finish(server, first.id, JobStatus.FAILED)
    server.dispatch_pending(time.time())
    store = Store(server.paths)
    for job_id in (second.id, third.id):
        record = store.load_job(job_id)
        assert record is not None and record.status is JobStatus.CANCELLED
        assert record.reason_code == "dependency_failed"
        assert f"job {first.id} (j{first.id})" in str(record.reason) and "FAILED" in str(
            record.reason
        )
        assert record.started_at is None


def test_gpus_are_reserved_exposed_and_released(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=8, memory=8 * GiB, slots=8)
    backend = RecordingBackend(8)
    server.backend = backend
    server.gpu_pool = GpuPool(["NVIDIA H100", "NVIDIA H100", "Tesla T4"])
    two = submit(server, resources={"accelerator": "H100", "gpus": 2.0})
    more = submit(server, resources={"accelerator": "H100", "gpus": 1.0})
    half_a = submit(server, resources={"accelerator": "T4", "gpus": 0.5})
    half_b = submit(server, resources={"accelerator": "T4", "gpus": 0.5})
    plain = submit(server)
    server.dispatch_pending(time.time())
    env = {j: backend.payloads[j]["env"] for j in backend.payloads}
    assert env[two.id]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env[two.id]["SKYPILOT_NUM_GPUS_PER_NODE"] == "2"
    assert env[half_a.id]["CUDA_VISIBLE_DEVICES"] == env[half_b.id]["CUDA_VISIBLE_DEVICES"] == "2"
    assert env[plain.id]["CUDA_VISIBLE_DEVICES"] == ""
    assert env[plain.id]["SKYPILOT_NODE_RANK"] == "0" and env[plain.id]["SKYPILOT_NUM_NODES"] == "1"
    assert more.id not in backend.payloads
    assert str(server.jobs[more.id].reason).startswith("waiting for 1 H100: in use by job")
    finish(server, two.id, JobStatus.SUCCEEDED)
    server.dispatch_pending(time.time())
    assert backend.payloads[more.id]["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_secrets_reach_the_payload_and_the_file_goes_when_the_job_ends(tmp_path: Path) -> None:
    server = make_server(str(tmp_path), cpus=2, memory=2 * GiB, slots=2)
    backend = RecordingBackend(2)
    server.backend = backend
    write_secrets(server.paths.job_secrets(1), {"TOKEN": "t0p"})
    job = submit(server, secrets=["TOKEN"])
    assert oct(os.stat(server.paths.job_secrets(1)).st_mode & 0o777) == "0o600"
    server.dispatch_pending(time.time())
    assert backend.payloads[job.id]["env"]["TOKEN"] == "t0p"
    finish(server, job.id, JobStatus.SUCCEEDED)
    assert not os.path.exists(server.paths.job_secrets(job.id))


def test_gpu_override_and_matching() -> None:
    assert parse_override("H100:2,T4") == ["H100", "H100", "T4"]
    assert parse_override("none") == []
    with pytest.raises(GpuOverrideError):
        parse_override("H100:x")
    assert gpu_matches("A100", "NVIDIA A100-SXM4-40GB")
    assert gpu_matches("A100-40GB", "NVIDIA A100 40GB PCIe")
    assert not gpu_matches("A100", "Tesla T4")
    assert gpu_matches(None, "anything")
