"""Helpers shared by the reliability tests (real CLI, real server, temporary homes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from tests.helpers import SkyMini, pid_alive, wait_for

TRIVIAL = ["--cpus", "0.1", "--", "true"]


def launch_async(sky: SkyMini, *argv: str) -> int:
    result = sky.run("jobs", "launch", "--async", *(argv or TRIVIAL), check=True)
    return int(result.out.strip())


def stop_foreground(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM a foreground server this test started and wait for its exit."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def kill_foreground(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGKILL)
        server.wait(30)


def server_log(sky: SkyMini) -> str:
    """Everything the foreground servers of this test logged (stderr) plus server.log."""
    text = ""
    base = os.path.dirname(sky.home)
    for name in sorted(os.listdir(base)):
        if name.startswith("fg-") and name.endswith(".log"):
            with open(os.path.join(base, name), errors="replace") as handle:
                text += handle.read()
    path = os.path.join(sky.home, "server.log")
    if os.path.exists(path):
        with open(path, errors="replace") as handle:
            text += handle.read()
    return text


def job_files(sky: SkyMini) -> list[str]:
    return sorted(os.listdir(os.path.join(sky.home, "jobs")))


def read_next_id(sky: SkyMini) -> int:
    with open(os.path.join(sky.home, "jobs", "next_id")) as handle:
        return int(handle.read().strip())


def all_records(sky: SkyMini) -> dict[int, dict[str, Any]]:
    """Every job record in the home, parsed (fails the test if one does not parse)."""
    records: dict[int, dict[str, Any]] = {}
    for name in job_files(sky):
        stem, _, ext = name.partition(".")
        if ext == "json" and stem.isdigit():
            with open(os.path.join(sky.home, "jobs", name)) as handle:
                records[int(stem)] = json.load(handle)
    return records


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text
    assert "internal error" not in text, text


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    wait_for(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit")
