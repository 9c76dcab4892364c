"""An idle executor's ready child (``jobproc.ReadyChild``): the next job's process, forked
ahead. It becomes the job exactly as a freshly forked one would, and never outlives its
executor (negative control: ``SKY_MINI_DISABLE=prefork_ties,slots``)."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import psutil
import pytest

from sky_mini.cgroups import detect_capabilities
from tests.helpers import SkyMini, pid_alive, wait_for

KILL_BOUND_SECONDS = 2.0  # the contract's bound for a job process once its tie is cut


def titled_children(pid: int, title: str) -> list[int]:
    found = []
    with contextlib.suppress(psutil.Error):
        for kid in psutil.Process(pid).children():
            with contextlib.suppress(psutil.Error):
                if kid.status() != psutil.STATUS_ZOMBIE and kid.cmdline()[:1] == [title]:
                    found.append(kid.pid)
    return found


def executor_and_ready_child(sky: SkyMini, server_pid: int) -> tuple[int, int]:
    def both() -> tuple[int, int] | None:
        for executor in titled_children(server_pid, f"sky-mini: executor job-0 [{sky.home}]"):
            ready = titled_children(executor, f"sky-mini: executor job-0: ready [{sky.home}]")
            if ready:
                return executor, ready[0]
        return None

    result: tuple[int, int] = wait_for(both, 10, "an executor with a ready child")
    return result


def queue_row(sky: SkyMini, job_id: int) -> dict[str, Any]:
    rows = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    row: dict[str, Any] = next(r for r in rows if r["id"] == job_id)
    return row


# Both kinds of ready child: the native launcher (joblaunch.c) and the Python fork.
@pytest.mark.parametrize("disabled", ["", "launcher"])
def test_the_next_job_runs_in_the_process_forked_ahead(sky: SkyMini, disabled: str) -> None:
    if disabled:
        sky.extra_env["SKY_MINI_DISABLE"] = disabled
    server = sky.serve_foreground("--executors", "1")
    executor, ready = executor_and_ready_child(sky, server.pid)
    job = int(sky.run("jobs", "launch", "--async", "--", "sleep", "1000", check=True).out)
    wait_for(lambda: queue_row(sky, job)["status"] == "RUNNING", 30, "job running")
    row = queue_row(sky, job)
    assert row["pid"] == ready
    # It became the job as a freshly forked process does: its own session, the raised OOM
    # score, the job's cgroups, the job's command.
    assert os.getsid(ready) == ready
    with open(f"/proc/{ready}/oom_score_adj") as handle:
        assert int(handle.read()) == 500
    with open(f"/proc/{ready}/cgroup") as handle:
        groups = handle.read()
    if detect_capabilities().v1_memory_root is not None:  # this host: a v1 memory group
        (memory,) = [line for line in groups.splitlines() if ":memory:" in line]
        assert memory.endswith(f"/sky-mini-{sky.key}/slot-job-0"), memory  # cgroups.slot
    assert " ".join(psutil.Process(ready).cmdline()).endswith("sleep 1000")
    sky.run("jobs", "cancel", str(job), check=True)
    wait_for(lambda: queue_row(sky, job)["status"] == "CANCELLED", 30, "job cancelled")
    # The executor forks the next one as soon as the job is over.
    _, again = executor_and_ready_child(sky, server.pid)
    assert again != ready and pid_alive(executor)


def test_without_prefork_the_job_is_forked_when_it_arrives(sky: SkyMini) -> None:
    sky.extra_env["SKY_MINI_DISABLE"] = "prefork"
    server = sky.serve_foreground("--executors", "1")
    (executor,) = wait_for(
        lambda: titled_children(server.pid, f"sky-mini: executor job-0 [{sky.home}]"), 10
    )
    assert psutil.Process(executor).children() == []
    job = int(sky.run("jobs", "launch", "--async", "--", "sleep", "1000", check=True).out)
    wait_for(lambda: queue_row(sky, job)["status"] == "RUNNING", 30, "job running")
    assert os.getsid(queue_row(sky, job)["pid"]) == queue_row(sky, job)["pid"]
    sky.run("jobs", "cancel", str(job), check=True)


# With slots on, the replacement executor also clears its slot group, killing a ready
# child left in it: the negative control turns that off too.
@pytest.mark.parametrize(
    "disabled", ["", "launcher", "prefork_ties,slots", "launcher,prefork_ties,slots"]
)
def test_a_ready_child_dies_with_its_executor(sky: SkyMini, disabled: str) -> None:
    if disabled:
        sky.extra_env["SKY_MINI_DISABLE"] = disabled
    server = sky.serve_foreground("--executors", "1")
    executor, ready = executor_and_ready_child(sky, server.pid)
    os.kill(executor, signal.SIGKILL)
    try:
        if "prefork_ties" not in disabled:
            wait_for(lambda: not pid_alive(ready), KILL_BOUND_SECONDS, "ready child gone")
            return
        # Negative control: without its ties the same check finds it alive.
        wait_for(lambda: not pid_alive(executor), 10, "executor gone")
        with pytest.raises(AssertionError):
            wait_for(lambda: not pid_alive(ready), KILL_BOUND_SECONDS, "ready child gone")
    finally:
        if pid_alive(ready) and psutil.Process(ready).create_time() > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ready, signal.SIGKILL)  # this test's own server forked it


def test_a_graceful_stop_leaves_no_cgroup_of_this_home(sky: SkyMini) -> None:
    caps = detect_capabilities()
    roots = [r for r in (caps.v1_memory_root, caps.v2_root) if r is not None]
    if not roots:
        pytest.skip("no writable cgroup on this host")
    server = sky.serve_foreground("--executors", "2")
    sky.run("jobs", "launch", "--", "true", check=True)
    bases = [os.path.join(root, f"sky-mini-{sky.key}") for root in roots]
    assert all(os.path.isdir(os.path.join(b, "slot-job-0")) for b in bases)  # in use
    sky.run("api", "stop", check=True)
    server.wait(timeout=30)
    assert not any(os.path.exists(b) for b in bases)  # slots and base dirs removed
