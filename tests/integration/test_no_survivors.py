"""Nothing survives the server: kill -9, the OOM killer, and PID 1 in a PID namespace.

Every check here has a negative control that turns the mechanism off with the test-only
``SKY_MINI_DISABLE`` switch and shows the same check then fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psutil
import pytest

from tests.helpers import SkyMini, has_inotify_fd, marked_pids, pid_alive, wait_for

KILL_BOUND_SECONDS = 2.0  # the contract: everything gone within 2 s of the server's death

PLAIN = ["sleep", "1000"]
GROUP = ["sh", "-c", "sleep 1000 & wait"]
ESCAPES = ["sh", "-c", "setsid sh -c 'sleep 1000' & sleep 1000"]
ESCAPES_AND_EXITS = ["sh", "-c", "setsid sh -c 'sleep 1000' & exit 0"]


def launch(sky: SkyMini, argv: list[str]) -> int:
    return int(sky.run("jobs", "launch", "--async", "--cpus", "0.1", "--", *argv, check=True).out)


def process_tree(sky: SkyMini, server_pid: int) -> set[int]:
    """The server, its executors, every job process and every marked process right now."""
    tree = {server_pid}
    with contextlib.suppress(psutil.Error):
        tree |= {p.pid for p in psutil.Process(server_pid).children(recursive=True)}
    tree |= set(marked_pids(sky.key + ":"))
    return tree


def survivors(sky: SkyMini, tree: set[int]) -> set[int]:
    return {p for p in tree if pid_alive(p)} | set(marked_pids(sky.key + ":"))


def start_three_jobs(sky: SkyMini) -> list[int]:
    jobs = [launch(sky, PLAIN), launch(sky, GROUP), launch(sky, ESCAPES)]
    for job in jobs:
        sky.wait_job(job, ("RUNNING",))
    # The escaped grandchild exists before we pull the plug.
    wait_for(lambda: len(marked_pids(sky.key + ":")) >= 6, message="all job processes up")
    return jobs


def kill_server_and_check(sky: SkyMini, server: subprocess.Popen[bytes]) -> set[int]:
    tree = process_tree(sky, server.pid)
    server.send_signal(signal.SIGKILL)
    server.wait()
    try:
        wait_for(lambda: not survivors(sky, tree), KILL_BOUND_SECONDS, "the old tree to die")
    except AssertionError:
        return survivors(sky, tree)
    return set()


def test_kill_9_leaves_nothing_and_restart_reconciles(sky: SkyMini) -> None:
    server = sky.serve_foreground("--executors", "3")
    jobs = start_three_jobs(sky)
    queued = launch(sky, PLAIN)
    assert sky.job(queued)["status"] == "PENDING"
    assert kill_server_and_check(sky, server) == set()
    # Immediately after: a new server starts, interrupted jobs are recorded, queued ones run.
    started = sky.run("api", "start")
    assert started.code == 0, started
    sky.wait_job(queued, ("RUNNING",))
    records = {r["id"]: r for r in sky.run("jobs", "queue", "--json", check=True).json()}
    for job in jobs:
        assert records[job]["status"] == "KILLED"
        assert records[job]["reason_code"] == "supervisor_lost"
        assert "server stopped" in records[job]["reason"]


def test_negative_control_escaped_process_survives_without_protections(sky: SkyMini) -> None:
    sky.extra_env["SKY_MINI_DISABLE"] = "cgroup,subreaper,sweep"
    server = sky.serve_foreground("--executors", "3")
    start_three_jobs(sky)
    left = kill_server_and_check(sky, server)
    try:
        assert left, "with cgroups, subreaper and sweep off, the setsid grandchild must survive"
        titles = {" ".join(psutil.Process(p).cmdline()) for p in left if pid_alive(p)}
        assert "sh -c sleep 1000" in titles
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_job_leftovers_die_when_the_job_ends(sky: SkyMini) -> None:
    sky.serve_foreground()
    job = launch(sky, ESCAPES_AND_EXITS)
    record = sky.wait_job(job, ("SUCCEEDED",))
    assert record["exit_code"] == 0
    wait_for(lambda: not marked_pids(sky.key + ":"), 5, "the escaped child to be killed")


def test_restart_sweeps_marked_leftovers_of_a_dead_instance(sky: SkyMini) -> None:
    """Layer 3 alone (cgroup and subreaper off): the next start kills what the last left."""
    sky.extra_env["SKY_MINI_DISABLE"] = "cgroup,subreaper"
    server = sky.serve_foreground("--executors", "3")
    start_three_jobs(sky)
    left = kill_server_and_check(sky, server)
    assert left  # without cgroup and subreaper the grandchild outlives the server...
    sky.serve_foreground("--executors", "3")
    wait_for(lambda: not any(pid_alive(p) for p in left), 10, "the sweep")  # ...until the sweep


@pytest.mark.slow
def test_kill_9_twenty_times(sky: SkyMini) -> None:
    failures = []
    for round_no in range(20):
        server = sky.serve_foreground("--executors", "3")
        start_three_jobs(sky)
        left = kill_server_and_check(sky, server)
        if left:
            failures.append((round_no, sorted(left)))
        sky.servers.clear()
    assert failures == [], f"survivors in rounds {failures}"


def test_jobs_are_the_oom_killers_first_choice(sky: SkyMini) -> None:
    server = sky.serve_foreground("--executors", "1")
    job = launch(sky, PLAIN)
    record = sky.wait_job(job, ("RUNNING",))

    def adj(pid: int) -> int:
        with open(f"/proc/{pid}/oom_score_adj") as handle:
            return int(handle.read())

    executor = psutil.Process(server.pid).children()[0].pid
    # The child raises its own score between fork and exec: poll until it has.
    wait_for(lambda: adj(record["pid"]) > max(adj(server.pid), adj(executor)), 10)


# -- the kernel's OOM killer takes the server ---------------------------------------------


def own_v1_memory_cgroup() -> str | None:
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                directory = "/sys/fs/cgroup/memory" + path
                return directory if os.access(directory, os.W_OK) else None
    return None


@pytest.fixture
def small_memory_cgroup() -> Iterator[str]:
    parent = own_v1_memory_cgroup() if os.geteuid() == 0 else None
    if parent is None:
        pytest.skip("needs root and a writable cgroup v1 memory controller")
    path = os.path.join(parent, f"smtest-oom-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as handle:
            handle.write(str(300 * 1024 * 1024))
        yield path
    finally:

        def empty() -> bool:
            with open(os.path.join(path, "cgroup.procs")) as handle:
                pids = [int(p) for p in handle.read().split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not pids

        wait_for(empty, 10, "test cgroup empty")
        for child in os.listdir(path):
            full = os.path.join(path, child)
            if os.path.isdir(full):
                with contextlib.suppress(OSError):
                    os.rmdir(full)
        wait_for(lambda: rmdir_ok(path), 10, "test cgroup removed")


def rmdir_ok(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


@pytest.mark.root
def test_server_killed_by_the_oom_killer_leaves_nothing(
    sky: SkyMini, small_memory_cgroup: str
) -> None:
    # Jobs keep the server's oom_score_adj here, so the +1000 set below makes the server the
    # kernel's clear first choice (the kernel scales the adj by the cgroup's limit).
    sky.extra_env["SKY_MINI_DISABLE"] = "oom_score"
    procs_file = os.path.join(small_memory_cgroup, "cgroup.procs")
    script = f'echo $$ > {procs_file} && exec "$@"'
    log = open(os.path.join(os.path.dirname(sky.home), "oom-server.log"), "ab")  # noqa: SIM115
    server = subprocess.Popen(
        [
            "sh",
            "-c",
            script,
            "sh",
            sys.executable,
            "-m",
            "sky_mini",
            "serve",
            "--foreground",
            "--executors",
            "2",
        ],
        env=sky.env,
        stdout=log,
        stderr=log,
    )
    sky.servers.append(server)
    wait_for(lambda: sky.status_ok(server.pid), message="server in the small cgroup")
    job = launch(sky, GROUP)
    sky.wait_job(job, ("RUNNING",))
    tree = process_tree(sky, server.pid)
    # Make the server the kernel's favourite victim, then exhaust the cgroup's memory.
    with open(f"/proc/{server.pid}/oom_score_adj", "w") as handle:
        handle.write("1000")
    hog = launch(sky, [sys.executable, "-c", "x = [bytearray(2**20) for _ in range(1000)]"])
    assert server.wait(30) == -signal.SIGKILL
    with open(os.path.join(small_memory_cgroup, "memory.oom_control")) as handle:
        oom_kills = dict(line.split() for line in handle)["oom_kill"]
    assert int(oom_kills) >= 1
    wait_for(lambda: not survivors(sky, tree), KILL_BOUND_SECONDS, "the old tree to die")
    assert sky.run("api", "start").code == 0
    for job_id in (job, hog):
        record = sky.wait_job(job_id, ("KILLED", "PENDING", "RUNNING", "SUCCEEDED"))
        if record["status"] == "KILLED":
            assert record["reason_code"] == "supervisor_lost"
    assert sky.job(job)["status"] == "KILLED"


# -- PID 1 in a fresh PID namespace -------------------------------------------------------


def ns_init_pid(unshare: subprocess.Popen[bytes]) -> int:
    def child() -> int | None:
        with contextlib.suppress(psutil.Error):
            kids = psutil.Process(unshare.pid).children()
            if kids:
                return kids[0].pid
        return None

    pid: int = wait_for(child, message="namespace init")
    return pid


def nsenter(sky: SkyMini, init_pid: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(init_pid), "-p", "-m", *args],
        env=sky.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def zombies_under(pid: int) -> list[int]:
    with contextlib.suppress(psutil.Error):
        return [
            p.pid
            for p in psutil.Process(pid).children(recursive=True)
            if p.status() == psutil.STATUS_ZOMBIE
        ]
    return []


ORPHANS = "for i in $(seq 100); do sh -c 'sleep 0.01 &'; done; sleep 0.5"


def run_as_pid1(sky: SkyMini, disable: str) -> tuple[subprocess.Popen[bytes], int]:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None or os.geteuid() != 0:
        pytest.skip("needs root and util-linux unshare/nsenter")
    env = dict(sky.env, SKY_MINI_DISABLE=disable)
    log = open(os.path.join(os.path.dirname(sky.home), "pid1.log"), "ab")  # noqa: SIM115
    unshare = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-m",
            "sky_mini",
            "serve",
            "--foreground",
            "--executors",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    sky.servers.append(unshare)
    init = ns_init_pid(unshare)
    wait_for(lambda: pid1_healthy(sky, init), 60, "PID 1 healthy by 'api status' inside")
    return unshare, init


def pid1_healthy(sky: SkyMini, init: int) -> bool:
    """The container HEALTHCHECK: ``sky-mini api status`` run inside the namespace."""
    done = nsenter(sky, init, sys.executable, "-m", "sky_mini", "api", "status", "--json")
    return done.returncode == 0 and json.loads(done.stdout).get("pid") == 1


@pytest.mark.root
@pytest.mark.parametrize("disable", ["", "subreaper"])
def test_pid1_reaps_orphans_and_stops_on_sigterm(sky: SkyMini, disable: str) -> None:
    unshare, init = run_as_pid1(sky, disable)
    launched = nsenter(
        sky, init, sys.executable, "-m", "sky_mini", "jobs", "launch", "--", "sh", "-c", ORPHANS
    )
    assert launched.returncode == 0, launched
    wait_for(lambda: not zombies_under(init), 10, "no zombies in the namespace")
    killed = nsenter(sky, init, "kill", "-TERM", "1")
    assert killed.returncode == 0, killed
    assert unshare.wait(30) == 0


@pytest.mark.root
def test_negative_control_pid1_without_reaping_leaves_zombies(sky: SkyMini) -> None:
    unshare, init = run_as_pid1(sky, "subreaper,reap")
    launched = nsenter(
        sky, init, sys.executable, "-m", "sky_mini", "jobs", "launch", "--", "sh", "-c", ORPHANS
    )
    assert launched.returncode == 0, launched
    wait_for(lambda: len(zombies_under(init)) >= 50, 10, "orphans left as zombies")
    unshare.send_signal(signal.SIGKILL)
    unshare.wait()


# -- graceful shutdown ----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_terms_then_kills_and_exits_0(sky: SkyMini, sig: int) -> None:
    server = sky.serve_foreground("--executors", "2")
    polite = launch(sky, PLAIN)
    # Ignores SIGTERM (and so does its sleep: SIG_IGN survives exec): needs the SIGKILL.
    stubborn = launch(sky, ["sh", "-c", "trap '' TERM; sleep 1000"])
    queued = launch(sky, PLAIN)
    for job in (polite, stubborn):
        sky.wait_job(job, ("RUNNING",))
    tree = process_tree(sky, server.pid)
    server.send_signal(sig)
    assert server.wait(30) == 0
    assert not survivors(sky, tree)
    for job in (polite, stubborn):
        record = sky.job(job)
        assert record["status"] == "KILLED" and record["reason_code"] == "shutdown", record
    assert sky.job(queued)["status"] == "PENDING"  # kept for the next start
    with open(os.path.join(sky.home, "server.log")) as handle:
        assert "SIGKILL after" in handle.read()


@pytest.mark.parametrize("revive", [True, False])
def test_a_waiting_cli_replaces_a_killed_server_and_gets_its_answer(
    sky: SkyMini, revive: bool
) -> None:
    """`jobs wait` on a job whose server is OOM-killed must end, not block forever.

    The negative control turns the waiter's server check off: the job then stays RUNNING in
    its record and the same wait can only time out.
    """
    if not revive:
        sky.extra_env["SKY_MINI_DISABLE"] = "revive"
    assert sky.run("api", "start").code == 0
    job = launch(sky, PLAIN)
    sky.wait_job(job, ("RUNNING",))
    waiter = sky.popen("jobs", "wait", str(job), "--timeout", "10")
    wait_for(lambda: has_inotify_fd(waiter.pid), message="the waiter to be waiting")
    old = sky.server_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    _, err = waiter.communicate(timeout=60)
    if revive:
        assert waiter.returncode == 1, err
        assert b"starting a new one" in err
        record = sky.job(job)
        assert record["status"] == "KILLED" and record["reason_code"] == "supervisor_lost"
        new = sky.server_pid()
        assert new is not None and new != old
    else:
        assert b"timed out" in err
        assert sky.job(job)["status"] == "RUNNING"
        assert sky.server_pid() is None
