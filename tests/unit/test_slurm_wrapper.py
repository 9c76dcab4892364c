"""The batch wrapper run directly (no Slurm): phases, exit record, timeout, forwarded TERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from sky_mini.server.backends.slurm import batch_wrapper
from tests.helpers import wait_for

WRAPPER = batch_wrapper.__file__


def start(tmp: str, **spec: Any) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    full = {
        "job_id": 1,
        "setup": None,
        "run": "true",
        "workdir": tmp,
        "timeout_seconds": None,
        "grace_seconds": 1.0,
        "num_nodes": 1,
        "started_path": os.path.join(tmp, "1.log.started.json"),
        "exit_path": os.path.join(tmp, "1.log.exit.json"),
        **spec,
    }
    path = os.path.join(tmp, "spec.json")
    with open(path, "w") as handle:
        json.dump(full, handle)
    log = open(os.path.join(tmp, "1.log"), "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, WRAPPER, path], stdout=log, stderr=log)
    return proc, full


def exit_record(spec: dict[str, Any]) -> dict[str, Any]:
    with open(spec["exit_path"]) as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def read_log(tmp: str) -> str:
    with open(os.path.join(tmp, "1.log")) as handle:
        return handle.read()


def test_setup_then_run_and_exit_record(tmp_path: os.PathLike[str]) -> None:
    tmp = str(tmp_path)
    proc, spec = start(tmp, setup="echo setting-up", run="echo rank=$SKYPILOT_NODE_RANK; exit 3")
    assert proc.wait(30) == 3
    record = exit_record(spec)
    assert record["phase"] == "run" and record["exit_code"] == 3 and not record["timed_out"]
    assert "setting-up" in read_log(tmp) and "rank=0" in read_log(tmp)


def test_failed_setup_skips_run(tmp_path: os.PathLike[str]) -> None:
    tmp = str(tmp_path)
    proc, spec = start(tmp, setup="exit 4", run="echo never")
    assert proc.wait(30) == 4
    assert exit_record(spec)["phase"] == "setup"
    assert "never" not in read_log(tmp)


def test_timeout_to_the_second_term_then_kill(tmp_path: os.PathLike[str]) -> None:
    tmp = str(tmp_path)
    begin = time.monotonic()
    # Ignores TERM: only the KILL after the grace ends it.
    proc, spec = start(tmp, run="trap 'echo got-term' TERM; while :; do sleep 0.1; done",
                       timeout_seconds=1.0)  # fmt: skip
    proc.wait(30)
    elapsed = time.monotonic() - begin
    record = exit_record(spec)
    assert record["timed_out"] and record["exit_code"] == 137 and record["signal"] == 9
    assert 1.0 <= elapsed < 15
    assert "got-term" in read_log(tmp)


def test_term_is_forwarded_to_the_job(tmp_path: os.PathLike[str]) -> None:
    tmp = str(tmp_path)
    ready = os.path.join(tmp, "ready")
    run = f"trap 'echo cleanup; exit 1' TERM; touch {ready}; sleep 60 & wait"
    proc, spec = start(tmp, run=run)
    wait_for(lambda: os.path.exists(ready), 20, "the job's TERM trap to be installed")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 1
    record = exit_record(spec)
    assert record["signal_received"] == signal.SIGTERM and record["exit_code"] == 1
    assert "cleanup" in read_log(tmp)
