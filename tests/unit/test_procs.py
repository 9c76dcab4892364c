"""Process helpers against real processes started by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from sky_mini import procs
from tests.helpers import pid_alive, wait_for


def test_descendants_walks_the_subtree_like_psutil_and_kill_descendants_clears_it() -> None:
    tree = subprocess.Popen(
        ["sh", "-c", "sleep 1000 & (sleep 1000 & wait) & wait"], start_new_session=True
    )
    try:
        wait_for(lambda: len(psutil.Process(tree.pid).children(recursive=True)) >= 3)
        expected = {p.pid for p in psutil.Process(tree.pid).children(recursive=True)}
        assert set(procs.descendants(tree.pid)) == expected
        assert tree.pid in procs.descendants(os.getpid())
        assert procs.tree_rss(tree.pid) >= procs.rss_bytes(tree.pid) > 0
        procs.kill_descendants(tree.pid)
        wait_for(lambda: not any(pid_alive(p) for p in expected), 10)
        tree.wait(10)  # its `wait` returns once its children are gone (raises if not)
    finally:
        if tree.poll() is None:
            os.killpg(tree.pid, signal.SIGKILL)
            tree.wait()


def test_rss_of_a_gone_process_is_zero() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procs.rss_bytes(child.pid) == 0
    assert procs.descendants(child.pid) == []


def test_vmstat_oom_counter_is_readable() -> None:
    value = procs.read_vmstat_oom_kills()
    assert value is None or value >= 0


def test_title_names_a_home_that_is_not_the_default() -> None:
    default = os.path.expanduser("~/.sky-mini")
    assert procs.title_for("server", default) == "sky-mini: server"
    assert procs.title_for("server", None) == "sky-mini: server"
    assert procs.title_for("executor job-0", "/srv/sky") == "sky-mini: executor job-0 [/srv/sky]"


def test_pid_1_is_judged_by_its_create_time_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKY_MINI_DISABLE", raising=False)
    real = procs.process_create_time(1)
    assert real is not None
    assert procs.is_same_process(1, real)
    assert not procs.is_same_process(1, real + 100)  # another PID 1 (e.g. a namespace's)
    monkeypatch.setenv("SKY_MINI_DISABLE", "pid1")  # the negative control brings back the bug
    assert not procs.is_same_process(1, real)
