"""Cron-scale submission and log following, end to end with the real CLI.

Speed is measured in scripts/bench, not asserted here (STYLE 20): the bounds below only stop
a hung test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import SkyMini, has_inotify_fd, wait_for

CONCURRENT_SUBMISSIONS = 100


def test_concurrent_async_submissions_from_cold_get_ids_1_to_n_and_one_server(
    sky: SkyMini,
) -> None:
    """Like 100 cron entries firing at once with no server running: nothing lost."""
    argv = [sys.executable, "-m", "sky_mini", "jobs", "launch", "--async", "--", "true"]
    procs = [
        subprocess.Popen(argv, env=sky.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(CONCURRENT_SUBMISSIONS)
    ]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    failures = [(p.returncode, err) for p, _, err in results if p.returncode != 0]
    assert not failures, failures[:3]
    printed = sorted(int(out) for _, out, _ in results)
    assert printed == list(range(1, CONCURRENT_SUBMISSIONS + 1))

    jobs_dir = os.path.join(sky.home, "jobs")
    recorded = sorted(int(n[: -len(".json")]) for n in os.listdir(jobs_dir) if n[0].isdigit())
    assert recorded == printed
    assert all(sky.job(i)["id"] == i for i in recorded)

    with open(os.path.join(sky.home, "server.log")) as handle:
        log = handle.read()
    started = re.findall(r"serving \(pid (\d+),", log)
    assert len(started) == 1, log
    assert "already running" not in log
    status = sky.run("api", "status", "--json", check=True).json()
    assert str(status["pid"]) == started[0]
    waited = sky.run("jobs", "wait", "--timeout", "240", *map(str, printed), timeout=300)
    if waited.code != 0:
        queue = sky.run("jobs", "queue", "--all").out
        with open(os.path.join(sky.home, "server.log")) as handle:
            log_tail = handle.read()[-4000:]
        raise AssertionError(f"{waited}\n{queue}\n{log_tail}")


@pytest.mark.parametrize("mechanism", ["inotify", "poll"])
def test_follower_started_before_the_job_prints_every_line_and_exits_with_its_code(
    sky: SkyMini, tmp_path: os.PathLike[str], mechanism: str
) -> None:
    sky.serve_foreground("--executors", "1")
    gate = os.path.join(str(tmp_path), "gate")
    blocker = f"while [ ! -e {gate} ]; do sleep 0.02; done"
    sky.run("jobs", "launch", "--async", "--", "sh", "-c", blocker, check=True)
    lines = [f"line {i}" for i in range(20)]
    script = "; ".join(f"echo '{line}'; sleep 0.01" for line in lines) + "; exit 5"
    job_id = sky.run("jobs", "launch", "--async", "--", "sh", "-c", script, check=True).out
    assert sky.job(int(job_id))["status"] == "PENDING"

    env = dict(sky.env)
    if mechanism == "poll":
        env["SKY_MINI_DISABLE"] = "inotify"  # the follower reads no config: only it polls
    follower = subprocess.Popen(
        [sys.executable, "-m", "sky_mini", "jobs", "logs", job_id.strip()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        if mechanism == "inotify":
            wait_for(lambda: has_inotify_fd(follower.pid), message="follower waiting on inotify")
        assert sky.job(int(job_id))["status"] == "PENDING"  # it has not started yet
        with open(gate, "w"):
            pass
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert out.decode().splitlines() == lines, err
    assert follower.returncode == 5, err


# -- attached launch in a real terminal ---------------------------------------------------


class Tmux:
    """One private tmux server (its own -L socket) running one command in a pane."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"sky-mini-test-{uuid.uuid4().hex[:12]}"
        self.env = env

    def cmd(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, "-f", os.devnull, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    def start(self, argv: list[str], code_file: str) -> None:
        """Run ``argv`` in a pane, under a wrapper that records its exit code in ``code_file``.

        The wrapper (not tmux) reports the code: tmux marks a pane dead when its pty closes
        and collects the status only when it gets around to reaping it, which made the
        exit code unreliable to read through tmux. The wrapper ignores SIGINT itself
        (after starting the CLI, which keeps Python's own handler) so Ctrl-C reaches the CLI.
        """
        wrapper = (
            "import signal, subprocess, sys\n"
            "child = subprocess.Popen(sys.argv[2:])\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "code = child.wait()\n"
            "open(sys.argv[1], 'w').write(str(128 - code if code < 0 else code))\n"
        )
        self.cmd(
            "new-session", "-d", "-s", "t", "-x", "200", "-y", "50",
            sys.executable, "-c", wrapper, code_file, *argv,
        )  # fmt: skip
        self.cmd("set-option", "-t", "t", "remain-on-exit", "on")

    def screen(self) -> str:
        return self.cmd("capture-pane", "-p", "-J", "-t", "t", "-S", "-100")

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True
        )


@pytest.fixture
def tmux(sky: SkyMini) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    session = Tmux(sky.env)
    try:
        yield session
    finally:
        session.kill()


def test_ctrl_c_detaches_attached_launch_and_logs_reattaches(
    sky: SkyMini, tmux: Tmux, tmp_path: os.PathLike[str]
) -> None:
    sky.serve_foreground()
    gate = os.path.join(str(tmp_path), "gate")
    script = f"echo started; while [ ! -e {gate} ]; do sleep 0.02; done; echo finished; exit 4"
    code_file = os.path.join(str(tmp_path), "cli-exit-code")
    tmux.start(
        [sys.executable, "-m", "sky_mini", "jobs", "launch", "--", "sh", "-c", script], code_file
    )
    wait_for(lambda: "started" in tmux.screen(), 60, "the job's first line on the terminal")

    tmux.cmd("send-keys", "-t", "t", "C-c")
    wait_for(lambda: os.path.exists(code_file), 60, "the attached CLI to exit")
    wait_for(lambda: "sky-mini jobs logs 1" in tmux.screen(), 10, "the reattach hint")
    assert "Detached from job 1" in tmux.screen()
    with open(code_file) as handle:
        assert handle.read() == "130"

    record = sky.job(1)
    assert record["status"] == "RUNNING", record  # detaching did not cancel it
    with open(gate, "w"):
        pass
    again = sky.run("jobs", "logs", "1", timeout=120)
    assert again.out == "started\nfinished\n", again
    assert again.code == 4, again
    assert sky.job(1)["status"] == "FAILED"
