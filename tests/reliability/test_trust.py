"""Permissions and trust: private modes, refusing unsafe homes, never following symlinks."""

from __future__ import annotations

import os
import stat

import psutil
import pytest

from tests.helpers import SkyMini, wait_for
from tests.reliability.common import assert_no_traceback, launch_async


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_home_is_0700_and_state_files_0600(sky: SkyMini) -> None:
    old_umask = os.umask(0o022)
    try:
        sky.serve_foreground()
        job = launch_async(sky, "--cpus", "0.1", "--", "echo", "hi")
        sky.wait_job(job, ("SUCCEEDED",))
    finally:
        os.umask(old_umask)
    home = sky.home
    for directory in ("", "jobs", "logs", "server", "intents", "services"):
        assert mode(os.path.join(home, directory)) == 0o700, directory
    for name in (
        f"jobs/{job}.json",
        "jobs/next_id",
        "jobs/id.lock",
        "jobs/active.json",
        f"logs/{job}.log",
        "server/status.json",
        "server/lock",
        "server/wake",
        "server.log",
    ):
        assert mode(os.path.join(home, name)) == 0o600, name


def test_world_writable_home_is_refused(sky: SkyMini) -> None:
    os.makedirs(sky.home)
    os.chmod(sky.home, 0o777)
    for argv in (("jobs", "launch", "--async", "--", "true"), ("api", "start"), ("jobs", "queue")):
        result = sky.run(*argv)
        assert result.code == 1, result
        assert "world-writable" in result.err and "chmod 700" in result.err
        assert_no_traceback(result.err)
    assert os.listdir(sky.home) == []


@pytest.mark.root
def test_home_owned_by_someone_else_is_refused(sky: SkyMini) -> None:
    import pwd

    os.makedirs(sky.home, 0o700)
    nobody = pwd.getpwnam("nobody")
    os.chown(sky.home, nobody.pw_uid, nobody.pw_gid)
    for argv in (("jobs", "launch", "--async", "--", "true"), ("serve", "--foreground")):
        result = sky.run(*argv)
        assert result.code == 1, result
        assert "owned by uid" in result.err
        assert_no_traceback(result.err)
    assert os.listdir(sky.home) == []


def test_home_that_is_a_symlink_is_refused(sky: SkyMini, tmp_path: os.PathLike[str]) -> None:
    real = os.path.join(str(tmp_path), "real")
    os.mkdir(real, 0o700)
    os.symlink(real, sky.home)
    result = sky.run("jobs", "launch", "--async", "--", "true")
    assert result.code == 1 and "symbolic link" in result.err
    assert os.listdir(real) == []


def make_target(tmp_path: os.PathLike[str]) -> tuple[str, bytes]:
    target = os.path.join(str(tmp_path), "passwd-like")
    content = b"root:x:0:0:root:/root:/bin/bash\n"
    with open(target, "wb") as handle:
        handle.write(content)
    os.chmod(target, 0o644)
    return target, content


def assert_unchanged(target: str, content: bytes) -> None:
    with open(target, "rb") as handle:
        assert handle.read() == content
    assert mode(target) == 0o644


def test_planted_record_symlink_is_never_followed(sky: SkyMini, tmp_path: os.PathLike[str]) -> None:
    target, content = make_target(tmp_path)
    sky.serve_foreground()
    first = launch_async(sky)
    sky.wait_job(first, ("SUCCEEDED",))
    planted = os.path.join(sky.home, "jobs", f"{first + 1}.json")
    os.symlink(target, planted)
    result = sky.run("jobs", "launch", "--async", "--cpus", "0.1", "--", "true")
    assert_no_traceback(result.err)
    if result.code == 0:
        new_id = int(result.out)
        assert new_id != first + 1  # stepped over the planted name
        sky.wait_job(new_id, ("SUCCEEDED",))
    for argv in (("jobs", "queue", "--all"), ("jobs", "logs", str(first + 1), "--no-follow")):
        shown = sky.run(*argv)
        assert_no_traceback(shown.err)
        assert "root:x" not in shown.out
    sky.run("jobs", "cancel", str(first + 1))
    assert_unchanged(target, content)
    assert sky.status_ok()


def test_planted_log_symlink_does_not_receive_job_output(
    sky: SkyMini, tmp_path: os.PathLike[str]
) -> None:
    target, content = make_target(tmp_path)
    sky.serve_foreground("--executors", "1")
    blocker = launch_async(sky, "--cpus", "0.1", "--", "sleep", "1000")
    sky.wait_job(blocker, ("RUNNING",))
    victim = launch_async(sky, "--cpus", "0.1", "--", "echo", "SECRET-OUTPUT")
    os.symlink(target, os.path.join(sky.home, "logs", f"{victim}.log"))
    sky.run("jobs", "cancel", str(blocker), check=True)
    record = sky.wait_job(victim, ("SUCCEEDED", "FAILED", "KILLED", "FAILED_SETUP"))
    assert record["status"] != "SUCCEEDED" or True  # either is fine; the target is what matters
    assert_unchanged(target, content)
    logs = sky.run("jobs", "logs", str(victim), "--no-follow")
    assert_no_traceback(logs.err)
    assert "root:x" not in logs.out
    # A log symlink planted before submission: the new job steps over that ID.
    nxt = os.path.join(sky.home, "logs", f"{victim + 1}.log")
    os.symlink(target, nxt)
    later = launch_async(sky, "--cpus", "0.1", "--", "echo", "SECRET-OUTPUT")
    assert later != victim + 1
    sky.wait_job(later, ("SUCCEEDED",))
    assert_unchanged(target, content)
    assert sky.status_ok()


@pytest.mark.parametrize("lock", ["jobs/id.lock", "server/start.lock", "jobs/next_id"])
def test_planted_lock_symlink_fails_cleanly(
    sky: SkyMini, tmp_path: os.PathLike[str], lock: str
) -> None:
    target, content = make_target(tmp_path)
    sky.serve_foreground()
    first = launch_async(sky)
    sky.wait_job(first, ("SUCCEEDED",))
    path = os.path.join(sky.home, lock)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)
    result = sky.run("jobs", "launch", "--async", "--cpus", "0.1", "--", "true")
    assert_no_traceback(result.err)
    if result.code != 0:
        assert result.code == 1 and ("symbolic link" in result.err or lock in result.err), result
    assert_unchanged(target, content)
    assert os.path.islink(path) or result.code == 0


def test_no_network_listener_besides_loopback(sky: SkyMini) -> None:
    server = sky.serve_foreground()
    job = launch_async(sky, "--cpus", "0.1", "--", "sleep", "1000")
    sky.wait_job(job, ("RUNNING",))
    tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    sky_mini_pids = {p.pid for p in tree if "sky-mini" in " ".join(p.cmdline())}
    assert len(sky_mini_pids) >= 2, "the server and at least one executor"
    for pid in sky_mini_pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            assert conn.status != psutil.CONN_LISTEN or conn.laddr.ip == "127.0.0.1", conn
    sky.run("jobs", "cancel", str(job), check=True)
    wait_for(lambda: sky.job(job)["status"] == "CANCELLED" or sky.job(job)["status"] == "KILLED")


def test_planted_server_log_symlink_is_not_followed(
    sky: SkyMini, tmp_path: os.PathLike[str]
) -> None:
    target, content = make_target(tmp_path)
    os.makedirs(sky.home, 0o700)
    os.symlink(target, os.path.join(sky.home, "server.log"))
    sky.serve_foreground()  # a foreground server also appends to server.log
    job = launch_async(sky)
    sky.wait_job(job, ("SUCCEEDED",))
    background = sky.run("api", "start")  # already running: must not open the log either
    assert_no_traceback(background.err)
    assert_unchanged(target, content)
