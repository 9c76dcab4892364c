"""Batch features for cron through the real CLI: retries, --unique, queues, pause, schedules,
restart, clean, hooks and shell completion."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from tests.helpers import SkyMini, marked_pids, pid_alive, wait_for


def write_config(sky: SkyMini, text: str) -> None:
    os.makedirs(sky.home, mode=0o700, exist_ok=True)
    with open(os.path.join(sky.home, "config.yaml"), "w") as handle:
        handle.write(text)


def launch(sky: SkyMini, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = sky.run(
        "jobs", "launch", "--async", "--json", *args, check=True
    ).json()
    return result


def record(sky: SkyMini, job_id: int) -> dict[str, Any]:
    for item in sky.run("jobs", "queue", "--all", "--json", check=True).json():
        if item["id"] == job_id:
            found: dict[str, Any] = item
            return found
    raise AssertionError(f"job {job_id} not in jobs queue --all")


def counting_script(counter: str, succeed_on: int) -> str:
    """Fails (exit 1) until its ``succeed_on``-th run."""
    return (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        f'echo "attempt $n"; [ "$n" -ge {succeed_on} ]'
    )


# -- retries --------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [2, 0])
def test_retries_fail_twice_then_succeed(sky: SkyMini, tmp_path: Any, retries: int) -> None:
    counter = os.path.join(str(tmp_path), "count")
    job = launch(sky, "--retries", str(retries), "--", "sh", "-c", counting_script(counter, 3))
    code = sky.run("jobs", "wait", str(job["id"]), timeout=120).code
    final = record(sky, job["id"])
    if retries == 0:  # negative control: without --retries the first failure is final
        assert code == 1 and final["status"] == "FAILED" and final["attempt"] == 1
        assert len(final["attempts"]) == 1
        return
    assert code == 0, final
    assert final["status"] == "SUCCEEDED" and final["attempt"] == 3 and final["id"] == job["id"]
    attempts = final["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["exit_code"] for a in attempts] == [1, 1, 0]
    assert [a["status"] for a in attempts] == ["FAILED", "FAILED", "SUCCEEDED"]
    # Exponential backoff: 1 s after the first failure, 2 s after the second.
    assert attempts[1]["started_at"] - attempts[0]["finished_at"] >= 1.0
    assert attempts[2]["started_at"] - attempts[1]["finished_at"] >= 2.0
    log = sky.run("jobs", "logs", str(job["id"]), "--no-follow", check=True).out
    assert log.splitlines() == ["attempt 1", "attempt 2", "attempt 3"]
    table = sky.run("jobs", "queue", check=True).out
    assert "ATTEMPT" in table and "3/3" in table


def test_retry_reason_is_shown_between_attempts(sky: SkyMini, tmp_path: Any) -> None:
    write_config(sky, "jobs: {retry_backoff_seconds: 600}\n")
    job = launch(sky, "--retries", "1", "--", "sh", "-c", "exit 1")
    waiting = wait_for(
        lambda: (r := record(sky, job["id"]))["attempt"] == 2 and r,
        60,
        "the retry to be queued",
    )
    assert waiting["status"] == "PENDING"
    assert waiting["reason"].startswith("retrying (attempt 2 of 2) after: ")
    assert "exited with code 1" in waiting["reason"]
    sky.run("jobs", "cancel", str(job["id"]), check=True)  # a cancel is never retried
    assert record(sky, job["id"])["status"] == "CANCELLED"


@pytest.mark.parametrize("retries", [1, 0])
def test_a_retried_job_survives_its_server_being_sigkilled(
    sky: SkyMini, tmp_path: Any, retries: int
) -> None:
    started = os.path.join(str(tmp_path), "started")
    script = f"if [ ! -e {started} ]; then touch {started}; exec sleep 300; fi; echo second"
    job = launch(sky, "--retries", str(retries), "--", "sh", "-c", script)
    sky.wait_job(job["id"], ("RUNNING",), 60)
    wait_for(lambda: os.path.exists(started), 60, "the first attempt to run")
    pid = sky.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 20, "the server to die")
    sky.run("api", "start", check=True)
    final = sky.wait_job(job["id"], ("SUCCEEDED", "KILLED", "FAILED"), 60)
    first = final["attempts"][0]
    assert first["status"] == "KILLED" and first["reason_code"] == "supervisor_lost"
    if retries == 0:  # negative control: the lost attempt is the job's end
        assert final["status"] == "KILLED" and final["attempt"] == 1
        return
    assert final["status"] == "SUCCEEDED" and final["attempt"] == 2
    assert sky.run("jobs", "logs", str(job["id"]), "--no-follow").out.endswith("second\n")


# -- --unique -------------------------------------------------------------------------


def test_thirty_concurrent_unique_launches_make_one_job(sky: SkyMini) -> None:
    sky.serve_foreground()
    argv = ("jobs", "launch", "--async", "--json", "--unique", "--name", "nightly")
    procs = [sky.popen(*argv, "--", "sleep", "120") for _ in range(30)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    assert len({o["id"] for o in outputs}) == 1
    assert sorted(o["deduplicated"] for o in outputs) == [False] + [True] * 29
    jobs = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert [j["name"] for j in jobs] == ["nightly"]
    # Plain text for cron: the existing ID, exit 0, nothing recorded.
    again = sky.run("jobs", "launch", "--async", "--unique", "--name", "nightly", "--", "true")
    assert again.code == 0 and again.out.strip() == str(outputs[0]["id"])
    assert "--unique" in again.err
    sky.run("jobs", "cancel", str(outputs[0]["id"]), check=True)
    fresh = launch(sky, "--unique", "--name", "nightly", "--", "true")
    assert not fresh["deduplicated"] and fresh["id"] != outputs[0]["id"]


# -- queues and pause -----------------------------------------------------------------

JOB_SPAN = "import time; s = time.time(); time.sleep(1); print(s, time.time())"


@pytest.mark.parametrize(("queue", "expect_overlap"), [("one", False), ("three", True)])
def test_a_parallel_1_queue_never_runs_two_jobs_at_once(
    sky: SkyMini, queue: str, expect_overlap: bool
) -> None:
    import sys

    write_config(sky, "queues: {one: {parallel: 1}, three: {parallel: 3}}\n")
    sky.extra_env["SKY_MINI_CPUS"] = "4"
    sky.serve_foreground("--executors", "4")
    sky.run("jobs", "pause", "--queue", queue, check=True)  # queue all ten, then let go
    ids = [
        launch(sky, "--queue", queue, "--", sys.executable, "-c", JOB_SPAN)["id"] for _ in range(10)
    ]
    sky.run("jobs", "resume", "--queue", queue, check=True)
    assert sky.run("jobs", "wait", *map(str, ids), timeout=180).code == 0
    spans = sorted(
        tuple(map(float, sky.run("jobs", "logs", str(i), "--no-follow").out.split())) for i in ids
    )
    overlaps = [b for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]
    # Negative control: a parallel-3 queue does run them together, so the check can fail.
    assert bool(overlaps) is expect_overlap, spans
    assert "QUEUE" in sky.run("jobs", "queue", "--queue", queue, check=True).out


def test_pause_survives_a_server_restart(sky: SkyMini) -> None:
    write_config(sky, "queues: {q: {}}\n")
    sky.serve_foreground()
    assert "Paused queue q" in sky.run("jobs", "pause", "--queue", "q", check=True).out
    held = launch(sky, "--queue", "q", "--", "true")["id"]
    wait_for(
        lambda: (record(sky, held)["reason"] or "").startswith("queue q paused"),
        30,
        "the paused reason",
    )
    sky.run("api", "stop", check=True)
    sky.serve_foreground()
    other = launch(sky, "--", "true")["id"]
    sky.wait_job(other, ("SUCCEEDED",))  # the new server dispatches, held job first in line
    still = record(sky, held)
    assert still["status"] == "PENDING" and still["reason"].startswith("queue q paused")
    assert still["queue"] == "q"
    sky.run("jobs", "resume", "--queue", "q", check=True)
    sky.wait_job(held, ("SUCCEEDED",))  # negative control: resumed, the same job does run


def test_pause_everything_lets_running_jobs_finish(sky: SkyMini, tmp_path: Any) -> None:
    sky.serve_foreground()
    go = os.path.join(str(tmp_path), "go")
    running = launch(sky, "--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")["id"]
    sky.wait_job(running, ("RUNNING",))
    sky.run("jobs", "pause", check=True)
    held = launch(sky, "--", "true")["id"]
    open(go, "w").close()
    sky.wait_job(running, ("SUCCEEDED",))
    wait_for(lambda: record(sky, held)["reason"], 30, "a reason for the held job")
    assert record(sky, held)["status"] == "PENDING"
    assert "paused" in record(sky, held)["reason"]
    sky.run("jobs", "resume", check=True)
    sky.wait_job(held, ("SUCCEEDED",))


def test_bad_batch_flags_exit_2_and_record_nothing(sky: SkyMini) -> None:
    write_config(sky, "queues: {q: {}}\n")
    for args in (
        ("--retries", "-1"),
        ("--at", "tomorrow-ish"),
        ("--at", "03:00", "--in", "5m"),
        ("--in", "soon"),
        ("--queue", "nope"),
    ):
        result = sky.run("jobs", "launch", "--async", *args, "--", "true")
        assert result.code == 2, (args, result)
        assert "Traceback" not in result.err and result.err.strip(), args
    assert sky.run("jobs", "pause", "--queue", "nope").code == 2
    assert sky.run("jobs", "queue", "--all", "--json", check=True).json() == []


# -- schedules ------------------------------------------------------------------------


def test_in_holds_the_job_until_then(sky: SkyMini) -> None:
    sky.serve_foreground()
    job = launch(sky, "--in", "3s", "--", "true")
    info = record(sky, job["id"])
    assert info["scheduled_at"] == pytest.approx(info["submitted_at"] + 3, abs=1)
    wait_for(
        lambda: (record(sky, job["id"])["reason"] or "").startswith("scheduled for"),
        30,
        "the scheduled reason",
    )
    final = sky.wait_job(job["id"], ("SUCCEEDED",))
    assert final["started_at"] >= info["scheduled_at"]


# -- restart and clean ----------------------------------------------------------------


def test_restart_runs_the_same_task_as_a_new_job(sky: SkyMini) -> None:
    sky.serve_foreground()
    first = launch(sky, "--name", "greet", "--env", "WHO=world", "--", "sh", "-c", "echo hi $WHO")
    sky.wait_job(first["id"], ("SUCCEEDED",))
    result = sky.run("jobs", "restart", str(first["id"]), check=True)
    new_id = int(result.out.strip())
    assert new_id > first["id"]
    final = sky.wait_job(new_id, ("SUCCEEDED",))
    assert final["name"] == "greet"
    assert sky.run("jobs", "logs", str(new_id), "--no-follow").out == "hi world\n"
    missing = sky.run("jobs", "restart", "999")
    assert missing.code == 1 and "no job 999" in missing.err


def test_clean_removes_finished_jobs_only_and_says_how_much(sky: SkyMini) -> None:
    sky.serve_foreground()
    done = [launch(sky, "--", "sh", "-c", "echo some output")["id"] for _ in range(3)]
    for job_id in done:
        sky.wait_job(job_id, ("SUCCEEDED",))
    later = launch(sky, "--in", "1h", "--", "true")["id"]
    kept = sky.run("jobs", "clean", "--older-than", "7d", check=True).out
    assert kept.startswith("Removed 0 finished")
    assert sky.run("jobs", "clean", "--older-than", "a while").code == 2
    out = sky.run("jobs", "clean", check=True).out
    assert out.startswith("Removed 3 finished job(s), freed ") and "kept 1 unfinished" in out
    remaining = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert [r["id"] for r in remaining] == [later]
    for job_id in done:
        assert not os.path.exists(os.path.join(sky.home, "logs", f"{job_id}.log"))
        assert sky.run("jobs", "logs", str(job_id), "--no-follow").code == 1


# -- hooks ----------------------------------------------------------------------------


@pytest.mark.parametrize("detached", [True, False])
def test_a_hook_that_hangs_does_not_stall_dispatch(
    sky: SkyMini, tmp_path: Any, detached: bool
) -> None:
    seen = os.path.join(str(tmp_path), "hook-env")
    on_finish = (
        f'echo "$SKY_MINI_JOB_ID $SKY_MINI_JOB_STATUS $SKY_MINI_JOB_EXIT_CODE $SKY_MINI_JOB_NAME '
        f'$SKY_MINI_JOB_LOG" >> {seen}; exec sleep 1000'
    )
    write_config(
        sky,
        f"hooks: {{on_finish: {json.dumps(on_finish)}, on_failure: 'exit 7', timeout: 10}}\n",
    )
    if not detached:  # negative control: a runner that waits for its hooks
        sky.extra_env["SKY_MINI_DISABLE"] = "hook_detach"
    sky.serve_foreground()
    failing = launch(sky, "--name", "etl", "--", "sh", "-c", "exit 4")["id"]
    wait_for(lambda: os.path.exists(seen), 60, "the hook to start")
    status = sky.status()
    assert status is not None
    hook_pids = marked_pids(f"{sky.key}:{status['instance_id']}:hook-{failing}")
    assert hook_pids
    after = launch(sky, "--", "true")["id"]
    sky.wait_job(after, ("SUCCEEDED",), 60)
    hanging = [p for p in hook_pids if pid_alive(p)]
    if detached:
        assert hanging, "the next job ran while the hook still hung"
    else:
        assert not hanging  # the loop sat out the whole hook timeout first
    with open(seen) as handle:
        first_line = handle.readline().split()
    log_path = os.path.join(sky.home, "logs", f"{failing}.log")
    assert first_line == [str(failing), "FAILED", "4", "etl", log_path]
    final = record(sky, failing)
    assert final["status"] == "FAILED" and final["exit_code"] == 4  # hooks never change it
    server_log = os.path.join(sky.home, "server.log")

    def logged(text: str) -> bool:
        with open(server_log) as handle:
            return text in handle.read()

    wait_for(lambda: logged(f"hook on_failure for job {failing} failed (exit code 7)"), 30)
    wait_for(lambda: logged(f"hook on_finish for job {failing} killed after 10s"), 60)
    wait_for(lambda: not any(pid_alive(p) for p in hook_pids), 30, "the hook to be gone")


# -- shell completion -----------------------------------------------------------------


def test_shell_completion_scripts_and_a_bash_query(sky: SkyMini) -> None:
    for shell, marker in (("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete")):
        sky.extra_env["_SKY_MINI_COMPLETE"] = f"{shell}_source"
        script = sky.run()
        assert script.code == 0 and marker in script.out, (shell, script)
    sky.extra_env.update(
        {"_SKY_MINI_COMPLETE": "bash_complete", "COMP_WORDS": "sky-mini jobs re", "COMP_CWORD": "2"}
    )
    query = sky.run()
    assert query.code == 0
    assert {"plain,restart", "plain,resume"} <= set(query.out.split())
    del sky.extra_env["_SKY_MINI_COMPLETE"]


# -- old state ------------------------------------------------------------------------


def test_state_v1_records_have_the_new_fields_defaulted(sky: SkyMini) -> None:
    from tests.reliability.test_old_state import install_fixture

    install_fixture("state-v1", sky.home)
    records = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert len(records) == 6
    for item in records:
        assert item["attempt"] == 1 and item["attempts"] == []
        assert item["queue"] is None and item["scheduled_at"] is None and item["after"] == []
    table = sky.run("jobs", "queue", "--all", check=True).out
    assert "ATTEMPT" not in table and "QUEUE" not in table
    sky.serve_foreground()
    done = sky.wait_job(5, ("SUCCEEDED",))
    assert done["attempt"] == 1 and len(done["attempts"]) == 1  # new fields from here on
