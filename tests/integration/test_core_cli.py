"""The core contract end to end: the real CLI against a real server in a temporary home."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from tests.helpers import SkyMini, pid_alive, wait_for


def test_attached_launch_streams_output_and_exits_with_job_code(sky: SkyMini) -> None:
    sky.serve_foreground()
    result = sky.run("jobs", "launch", "--", "sh", "-c", "echo hi; exit 3")
    assert result.code == 3, result
    assert result.out == "hi\n"
    queue = sky.run("jobs", "queue", "--json", check=True).json()
    (record,) = queue
    assert record["status"] == "FAILED"
    assert record["exit_code"] == 3
    assert "exited with code 3" in record["reason"]
    for key in (
        "id",
        "name",
        "status",
        "reason",
        "reason_code",
        "exit_code",
        "submitted_at",
        "started_at",
        "finished_at",
        "pid",
        "peak_memory_bytes",
        "log_path",
    ):
        assert key in record


def test_twenty_async_launches_get_distinct_increasing_ids_and_succeed(sky: SkyMini) -> None:
    sky.serve_foreground()
    ids = []
    for i in range(20):
        result = sky.run("jobs", "launch", "--async", "--", "sh", "-c", f"echo {i}", check=True)
        ids.append(int(result.out.strip()))
    assert ids == list(range(1, 21))
    waited = sky.run("jobs", "wait", *map(str, ids), timeout=120)
    assert waited.code == 0, waited
    records = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert [r["status"] for r in records] == ["SUCCEEDED"] * 20
    assert sky.run("jobs", "logs", "7", "--no-follow", check=True).out == "6\n"


def test_async_json_and_wait_reports_first_failure(sky: SkyMini) -> None:
    sky.serve_foreground()
    ok = sky.run("jobs", "launch", "--async", "--json", "--", "true", check=True).json()
    bad = sky.run("jobs", "launch", "--async", "--json", "--", "sh", "-c", "exit 7").json()
    assert ok["id"] == 1 and bad["id"] == 2
    assert sky.run("jobs", "wait", "1", "2").code == 7


def test_cancel_pending_job_never_starts(sky: SkyMini) -> None:
    sky.serve_foreground("--executors", "1")
    blocker = int(sky.run("jobs", "launch", "--async", "--", "sleep", "1000", check=True).out)
    sky.wait_job(blocker, ("RUNNING",))
    marker = os.path.join(sky.home, "..", "pending-ran")
    pending = int(sky.run("jobs", "launch", "--async", "--", "touch", marker, check=True).out)
    result = sky.run("jobs", "cancel", str(pending), check=True)
    assert "CANCELLED" in result.out
    sky.run("jobs", "cancel", str(blocker), check=True)
    record = sky.wait_job(pending, ("CANCELLED",))
    assert record["started_at"] is None
    assert not os.path.exists(marker)
    # Idempotent: a second cancel says so and succeeds.
    again = sky.run("jobs", "cancel", str(pending))
    assert again.code == 0 and "already finished" in again.out


def test_cancel_running_job_kills_its_whole_group(sky: SkyMini) -> None:
    sky.serve_foreground()
    job = int(
        sky.run(
            "jobs",
            "launch",
            "--async",
            "--",
            "sh",
            "-c",
            "sleep 1000 & sleep 1000; wait",
            check=True,
        ).out
    )
    record = sky.wait_job(job, ("RUNNING",))
    pgid = record["pgid"]
    members = wait_for(lambda: group_members(pgid) if len(group_members(pgid)) >= 3 else None)
    result = sky.run("jobs", "cancel", str(job), check=True)
    assert "CANCELLED" in result.out
    final = sky.job(job)
    assert final["status"] == "CANCELLED"
    assert final["reason_code"] == "cancelled"
    wait_for(lambda: not any(pid_alive(p) for p in members), 10, "job group gone")


def group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(p) for p, g in (line.split() for line in out.splitlines()) if int(g) == pgid]


def test_process_titles_name_server_and_executors(sky: SkyMini) -> None:
    server = sky.serve_foreground("--executors", "2")
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True
    ).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    titles = {int(pid): args for pid, ppid, args in rows if int(ppid) == server.pid}
    suffix = f" [{sky.home}]"  # a non-default home is named in every title
    assert sorted(titles.values()) == [
        f"sky-mini: executor job-0{suffix}",
        f"sky-mini: executor job-1{suffix}",
    ]
    own = [args for pid, _, args in rows if int(pid) == server.pid]
    assert own == [f"sky-mini: server{suffix}"]
    # setproctitle kept the environment block: tools that read it still find the home.
    for pid in [server.pid, *titles]:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read().split(b"\0")
        assert f"SKY_MINI_HOME={sky.home}".encode() in environ, pid


def test_jobs_do_not_inherit_the_title_switches(sky: SkyMini) -> None:
    sky.serve_foreground()
    result = sky.run("jobs", "launch", "--", "sh", "-c", "env | grep -c 'SPT_NOENV\\|TITLE_ROOM'")
    assert result.out.strip().splitlines()[-1] == "0", result


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("run: [unclosed\n", "line"),
        ("run: echo\nbogus: 1\n", "bogus"),
        ("name: x\n", "run"),
        ("run: echo\nresources:\n  memory: lots\n", "resources.memory"),
    ],
)
def test_bad_task_files_exit_2_and_record_nothing(
    sky: SkyMini, tmp_path: os.PathLike[str], content: str, needle: str
) -> None:
    path = os.path.join(str(tmp_path), "task.yaml")
    with open(path, "w") as handle:
        handle.write(content)
    result = sky.run("jobs", "launch", "--async", path)
    assert result.code == 2, result
    assert path in result.err and needle in result.err
    assert "Traceback" not in result.err
    assert not os.path.exists(os.path.join(sky.home, "jobs", "1.json"))
    assert sky.server_pid() is None  # nothing recorded, so nothing to start


def test_missing_task_file_exit_2(sky: SkyMini) -> None:
    result = sky.run("jobs", "launch", "/nonexistent/task.yaml")
    assert result.code == 2 and "/nonexistent/task.yaml" in result.err
    assert "Traceback" not in result.err


def test_task_file_with_setup_workdir_and_envs(sky: SkyMini, tmp_path: os.PathLike[str]) -> None:
    work = os.path.join(str(tmp_path), "work")
    os.mkdir(work)
    path = os.path.join(str(tmp_path), "task.yaml")
    with open(path, "w") as handle:
        handle.write(
            "name: greet\nworkdir: work\nenvs: {WHO: world}\n"
            "setup: echo setting-up > setup.txt\n"
            "run: cat setup.txt; echo hello ${WHO} from $(basename $PWD)\n"
        )
    sky.serve_foreground()
    result = sky.run("jobs", "launch", path)
    assert result.code == 0, result
    assert result.out == "setting-up\nhello world from work\n"
    failing = os.path.join(str(tmp_path), "fail.yaml")
    with open(failing, "w") as handle:
        handle.write("setup: exit 4\nrun: echo never\n")
    result = sky.run("jobs", "launch", failing)
    assert result.code == 4
    assert sky.job(2)["status"] == "FAILED_SETUP"


def test_api_status_exit_codes(sky: SkyMini) -> None:
    none = sky.run("api", "status")
    assert none.code == 3 and "no sky-mini server" in none.err
    sky.serve_foreground()
    status = sky.run("api", "status", "--json")
    assert status.code == 0, status
    report = status.json()
    assert report["health"] == "healthy"
    names = [c["name"] for c in report["components"]]
    assert names[0] == "server" and any(n.startswith("executor job-") for n in names)


def test_auto_start_and_api_stop(sky: SkyMini) -> None:
    result = sky.run("jobs", "launch", "--", "echo", "auto")
    assert result.code == 0 and result.out == "auto\n"
    pid = wait_for(sky.server_pid)
    again = sky.run("api", "start", check=True)
    assert "already running" in again.out
    stop = sky.run("api", "stop", check=True)
    assert f"pid {pid}" in stop.out
    assert not pid_alive(pid)
    assert sky.run("api", "status").code == 3


def test_jobs_logs_reads_files_without_server(sky: SkyMini) -> None:
    sky.serve_foreground()
    sky.run("jobs", "launch", "--", "sh", "-c", "seq 1 500", check=True)
    sky.run("api", "stop", check=True)
    tail = sky.run("jobs", "logs", "1", "--tail", "3", "--no-follow", check=True)
    assert tail.out == "498\n499\n500\n"
    follow = sky.run("jobs", "logs", "1")
    assert follow.code == 0 and follow.out.splitlines()[-1] == "500"


def test_bad_job_ids_are_usage_errors(sky: SkyMini) -> None:
    for bad in ("../x", "1e9", "0", "abc"):
        result = sky.run("jobs", "logs", bad)
        assert result.code == 2, (bad, result)
        assert "Traceback" not in result.err
    unknown = sky.run("jobs", "logs", "999", "--no-follow")
    assert unknown.code == 1 and "no job 999" in unknown.err


def test_python_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sky_mini", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "sky-mini" in result.stdout


def test_timeout_kills_the_job_with_reason_code_timeout(sky: SkyMini) -> None:
    sky.serve_foreground()
    result = sky.run("jobs", "launch", "--timeout", "1s", "--", "sleep", "1000")
    assert result.code == 128 + 15 or result.code == 128 + 9, result
    record = sky.job(1)
    assert record["status"] == "KILLED" and record["reason_code"] == "timeout"
    assert "timed out after 1" in record["reason"]


def test_crash_looping_executor_makes_status_degraded(sky: SkyMini) -> None:
    import psutil

    from sky_mini.server.backends.local.pool import MAX_RESTARTS_IN_WINDOW

    server = sky.serve_foreground("--executors", "1")

    def executor_pid() -> int | None:
        # Not the killed executor's ready child (jobproc), briefly the server's orphan.
        for kid in psutil.Process(server.pid).children():
            with contextlib.suppress(psutil.Error):
                if kid.cmdline()[:1] == [f"sky-mini: executor job-0 [{sky.home}]"]:
                    return kid.pid
        return None

    killed: set[int] = set()
    for _ in range(MAX_RESTARTS_IN_WINDOW + 1):
        pid = wait_for(lambda: (p := executor_pid()) and p not in killed and p, 10)
        killed.add(pid)
        os.kill(pid, 9)
        wait_for(lambda pid=pid: not pid_alive(pid), 10)
    wait_for(lambda: sky.run("api", "status").code == 4, 10, "status degraded")
    report = sky.run("api", "status", "--json").json()
    assert report["health"] == "degraded"
    assert report["degraded_components"] == ["executor job-0"]
