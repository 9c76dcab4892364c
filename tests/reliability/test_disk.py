"""Full and read-only disks (root: needs mount). The home is a 1 MiB tmpfs."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import SkyMini, pid_alive, wait_for
from tests.reliability.common import assert_no_traceback, launch_async, server_log

pytestmark = pytest.mark.root


@pytest.fixture
def tmpfs_home(sky: SkyMini) -> Iterator[SkyMini]:
    os.makedirs(sky.home, 0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", sky.home], check=True
    )
    try:
        yield sky
    finally:
        sky.cleanup()
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", sky.home], check=True)


def fill_disk(path: str) -> None:
    """Fill the filesystem: big writes, then single bytes into the last partial blocks."""
    for name, chunk in ((path, 65536), (path + "2", 1)):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)


def test_full_disk_submit_fails_cleanly_and_recovers(tmpfs_home: SkyMini) -> None:
    sky = tmpfs_home
    server = sky.serve_foreground()
    first = launch_async(sky, "--cpus", "0.1", "--", "echo", "before-full")
    sky.wait_job(first, ("SUCCEEDED",))
    filler = os.path.join(sky.home, "filler")
    fill_disk(filler)
    for _ in range(3):
        result = sky.run("jobs", "launch", "--async", "--cpus", "0.1", "--", "true")
        assert result.code == 1, result
        assert "no space left" in result.err, result.err
        assert_no_traceback(result.err)
    assert sky.job(first)["status"] == "SUCCEEDED"
    assert sky.run("jobs", "logs", str(first), "--no-follow", check=True).out == "before-full\n"
    assert pid_alive(server.pid)
    status = sky.run("api", "status")
    assert status.code == 0, status
    assert sky.run("jobs", "queue", "--all", check=True).code == 0
    os.unlink(filler)
    os.unlink(filler + "2")
    after = launch_async(sky, "--cpus", "0.1", "--", "echo", "after-full")
    assert after == first + 1
    sky.wait_job(after, ("SUCCEEDED",))
    assert sky.run("jobs", "logs", str(after), "--no-follow", check=True).out == "after-full\n"
    assert pid_alive(server.pid)


def test_disk_fills_while_jobs_run_server_survives(tmpfs_home: SkyMini) -> None:
    sky = tmpfs_home
    server = sky.serve_foreground()
    filler = os.path.join(sky.home, "filler")
    job = launch_async(sky, "--cpus", "0.1", "--", "sh", "-c", "sleep 0.5; echo late output")
    fill_disk(filler)
    wait_for(lambda: "will retry when there is space" in server_log(sky), 30, "the warning")
    assert pid_alive(server.pid)
    os.unlink(filler)
    os.unlink(filler + "2")
    # The record the full disk held back is written once there is space again.
    record = sky.wait_job(job, ("SUCCEEDED", "FAILED"))
    assert record["finished_at"] is not None
    again = launch_async(sky)
    sky.wait_job(again, ("SUCCEEDED",))
    assert sky.run("api", "status").code == 0


@pytest.mark.parametrize("argv", [("api", "start"), ("serve", "--foreground")])
def test_read_only_home_fails_clearly_at_start(tmpfs_home: SkyMini, argv: tuple[str, ...]) -> None:
    sky = tmpfs_home
    subprocess.run(["mount", "-o", "remount,ro", sky.home], check=True)
    result = sky.run(*argv, timeout=60)
    assert result.code == 1, result
    assert "read-only" in result.err.lower(), result.err
    assert_no_traceback(result.err)
    launch = sky.run("jobs", "launch", "--async", "--", "true")
    assert launch.code == 1 and "read-only" in launch.err.lower(), launch
    assert_no_traceback(launch.err)
