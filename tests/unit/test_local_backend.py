"""LocalBackend's handling of a dead executor, driven without forking (fakes inside)."""

from __future__ import annotations

import os
import signal

import pytest

from sky_mini.server.backends.local import pool as local
from sky_mini.server.backends.local.pool import ExecutorHandle, LocalBackend


def sigkill_status() -> int:
    """A raw wait status for a death by SIGKILL."""
    return signal.SIGKILL  # WIFSIGNALED with WTERMSIG == 9 and no core dump


def backend_with_busy_executor(job_id: int) -> tuple[LocalBackend, ExecutorHandle]:
    backend = LocalBackend(
        1,
        cgroup_caps=None,
        cgroup_base="sky-mini-test",
        memory_mechanism="watchdog",
        disabled=frozenset(),
    )
    handle = backend.executors[0]
    handle.pid, handle.alive, handle.job_id = 424242, True, job_id
    handle.vmstat_at_launch = 10
    return backend, handle


@pytest.mark.parametrize(
    ("vmstat_now", "code"), [(11, "oom"), (10, "supervisor_lost"), (None, "supervisor_lost")]
)
def test_an_executor_killed_mid_job_reports_the_job(
    monkeypatch: pytest.MonkeyPatch, vmstat_now: int | None, code: str
) -> None:
    monkeypatch.setattr(local.procs, "read_vmstat_oom_kills", lambda: vmstat_now)
    killed: list[tuple[int | None, list[str]]] = []
    monkeypatch.setattr(local, "kill_job_leftovers", lambda g, c: killed.append((g, c)))
    backend, handle = backend_with_busy_executor(7)
    handle.job_pgid, handle.job_cgroups = 999, ["/sys/fs/cgroup/unified/sky-mini-x/job-7"]
    (event,) = backend.child_exited(handle.pid, sigkill_status())
    assert event.kind == "finished" and event.job_id == 7
    assert event.data["status"] == "KILLED" and event.data["reason_code"] == code
    assert "job-0" in event.data["reason"]
    if code == "oom":
        assert event.data["reason"].startswith("out of memory")
    # The job's processes are killed, the slot is free, and the executor will be replaced.
    assert killed == [(999, ["/sys/fs/cgroup/unified/sky-mini-x/job-7"])]
    assert handle.job_id is None and not handle.alive
    assert os.WIFSIGNALED(sigkill_status())


def test_an_idle_executor_death_reports_no_job(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, handle = backend_with_busy_executor(7)
    handle.job_id = None
    assert backend.child_exited(handle.pid, sigkill_status()) == []
    assert not handle.alive
