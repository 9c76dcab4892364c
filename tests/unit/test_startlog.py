"""The start log (``server/startlog``): lines in, starts out; a torn tail is skipped."""

from __future__ import annotations

import os
from typing import Any

from sky_mini.server import startlog
from sky_mini.server.startlog import StartLog


def test_starts_read_back_and_a_torn_last_line_is_skipped(tmp_path: Any) -> None:
    log = StartLog(str(tmp_path / "starts.log"))
    assert log.read_started() == set()  # no file yet
    assert log.note(7, 1) and log.note(8, 2)
    log.close()
    with open(log.path, "ab") as handle:
        handle.write(b"9")  # killed in the middle of a write
    assert log.read_started() == {(7, 1), (8, 2)}
    again = StartLog(log.path)
    assert again.note(10, 1)  # appends after what is there
    assert again.size == os.path.getsize(log.path)
    assert again.read_started() == {(7, 1), (8, 2), (10, 1)}  # not glued to the torn "9"
    again.empty()
    assert again.read_started() == set() and again.size == 0


def test_a_long_log_is_emptied_only_when_no_local_job_is_unfinished(
    tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(startlog, "START_LOG_MAX_BYTES", 10)
    log = StartLog(str(tmp_path / "starts.log"))
    for job_id in range(5):
        log.note(job_id, 1)
    log.trim(unfinished_local=True)
    assert len(log.read_started()) == 5
    log.trim(unfinished_local=False)
    assert log.read_started() == set() and log.size == 0
    assert log.note(6, 1) and log.read_started() == {(6, 1)}
