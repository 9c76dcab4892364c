"""Corrupt state: the server starts, quarantines what it cannot read, keeps the rest.

Each case builds real state with the real CLI and server, stops the server, damages one
file, starts a server again and checks: it is healthy, the damaged file is moved aside as
``*.corrupt-*`` with a warning naming it (or skipped, for a newer schema), every readable
record is kept, new jobs run, and no ID is ever reused.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import pytest

from tests.helpers import SkyMini
from tests.reliability.common import (
    all_records,
    assert_no_traceback,
    job_files,
    launch_async,
    server_log,
    stop_foreground,
)


def build_state(sky: SkyMini) -> list[int]:
    server = sky.serve_foreground()
    ids = [launch_async(sky, "--cpus", "0.1", "--", "echo", "old") for _ in range(3)]
    for job_id in ids:
        sky.wait_job(job_id, ("SUCCEEDED",))
    stop_foreground(server)
    return ids


def corrupted(sky: SkyMini, name: str) -> list[str]:
    directory = os.path.join(sky.home, os.path.dirname(name))
    base = os.path.basename(name)
    return [n for n in os.listdir(directory) if n.startswith(base + ".corrupt-")]


def restart_and_submit(sky: SkyMini) -> int:
    sky.serve_foreground()
    new_id = launch_async(sky)
    sky.wait_job(new_id, ("SUCCEEDED",))
    return new_id


RECORD_DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda raw: raw[: len(raw) // 2],
    "garbage": lambda raw: b"\x00\xff\xfe garbage \x80" * 10,
    "empty": lambda raw: b"",
    "not-an-object": lambda raw: b"[1, 2, 3]",
    "wrong-types": lambda raw: json.dumps({"id": "two", "status": 5}).encode(),
}


@pytest.mark.parametrize("damage", sorted(RECORD_DAMAGE))
def test_damaged_record_is_quarantined_and_the_rest_kept(sky: SkyMini, damage: str) -> None:
    ids = build_state(sky)
    path = os.path.join(sky.home, "jobs", "2.json")
    with open(path, "rb") as handle:
        raw = handle.read()
    with open(path, "wb") as handle:
        handle.write(RECORD_DAMAGE[damage](raw))
    new_id = restart_and_submit(sky)
    assert new_id == ids[-1] + 1
    queue = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert [r["id"] for r in queue] == [1, 3, new_id]
    assert [r["status"] for r in queue] == ["SUCCEEDED"] * 3
    moved = corrupted(sky, "jobs/2.json")
    assert len(moved) == 1, job_files(sky)
    assert "jobs/2.json" in server_log(sky) + sky.run("jobs", "logs", "2").err
    assert not os.path.exists(path)
    logs = sky.run("jobs", "logs", "2", "--no-follow")
    assert logs.code == 1 and "no job 2" in logs.err
    assert_no_traceback(logs.err)


def test_future_schema_record_is_skipped_never_rewritten(sky: SkyMini) -> None:
    ids = build_state(sky)
    path = os.path.join(sky.home, "jobs", "2.json")
    with open(path) as handle:
        data = json.load(handle)
    data.update(schema=99, status="PENDING", finished_at=None, new_field={"x": 1})
    payload = json.dumps(data).encode()
    with open(path, "wb") as handle:
        handle.write(payload)
    before = os.stat(path)
    new_id = restart_and_submit(sky)
    assert new_id == ids[-1] + 1
    queue = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert [r["id"] for r in queue] == [1, 3, new_id]
    logs = sky.run("jobs", "logs", "2", "--no-follow")
    assert logs.code == 1
    assert_no_traceback(logs.err)
    sky.run("jobs", "cancel", "2")  # must not touch it either
    assert corrupted(sky, "jobs/2.json") == []
    with open(path, "rb") as handle:
        assert handle.read() == payload
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "schema version 99" in server_log(sky)


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"\x00\x00", b"-5\n", b"0\n", b"1\n"])
def test_corrupt_next_id_never_reuses_an_id(sky: SkyMini, content: bytes) -> None:
    ids = build_state(sky)
    with open(os.path.join(sky.home, "jobs", "next_id"), "wb") as handle:
        handle.write(content)
    new_id = restart_and_submit(sky)
    assert new_id == ids[-1] + 1
    records = all_records(sky)
    assert sorted(records) == [1, 2, 3, 4]
    assert all(records[i]["status"] == "SUCCEEDED" for i in ids)


def test_corrupt_next_id_after_a_quarantined_record_never_reuses_its_id(sky: SkyMini) -> None:
    ids = build_state(sky)
    with open(os.path.join(sky.home, "jobs", "3.json"), "wb") as handle:
        handle.write(b"{trunc")
    sky.serve_foreground()
    sky.run("jobs", "queue", "--all", check=True)  # quarantines 3.json
    assert corrupted(sky, "jobs/3.json")
    with open(os.path.join(sky.home, "jobs", "next_id"), "wb") as handle:
        handle.write(b"2\n")
    new_id = launch_async(sky)
    sky.wait_job(new_id, ("SUCCEEDED",))
    assert new_id == ids[-1] + 1


@pytest.mark.parametrize(
    "name", ["jobs/active.json", "server/status.json", "jobs/pruned_below.json"]
)
@pytest.mark.parametrize("content", [b'{"active": [1, 2', b"\xff\xfe\x00", b""])
def test_corrupt_index_files_are_quarantined(sky: SkyMini, name: str, content: bytes) -> None:
    ids = build_state(sky)
    with open(os.path.join(sky.home, name), "wb") as handle:
        handle.write(content)
    new_id = restart_and_submit(sky)
    assert new_id == ids[-1] + 1
    queue = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert [r["id"] for r in queue] == [*ids, new_id]
    if name != "jobs/pruned_below.json":  # read only hourly, by pruning
        assert corrupted(sky, name), os.listdir(os.path.dirname(os.path.join(sky.home, name)))
        assert name in server_log(sky)


def test_pending_job_with_corrupt_active_index_still_runs(sky: SkyMini) -> None:
    server = sky.serve_foreground("--executors", "1")
    blocker = launch_async(sky, "--cpus", "0.1", "--", "sleep", "1000")
    sky.wait_job(blocker, ("RUNNING",))
    pending = launch_async(sky)
    sky.wait_job(blocker, ("RUNNING",))
    from tests.reliability.common import kill_foreground

    kill_foreground(server)
    with open(os.path.join(sky.home, "jobs", "active.json"), "wb") as handle:
        handle.write(b"{{{")
    sky.serve_foreground()
    sky.wait_job(pending, ("SUCCEEDED",))
    assert sky.job(blocker)["reason_code"] == "supervisor_lost"


def test_missing_jobs_directory(sky: SkyMini) -> None:
    build_state(sky)
    shutil.rmtree(os.path.join(sky.home, "jobs"))
    new_id = restart_and_submit(sky)
    # The records are gone, so the counter is too; but a new job never inherits the
    # output of an old one whose log is still there.
    with open(os.path.join(sky.home, "logs", f"{new_id}.log"), "rb") as handle:
        assert handle.read() == b""
    assert sky.run("jobs", "queue", "--all", check=True).code == 0


def test_record_written_but_counter_not_moved_still_runs(
    sky: SkyMini, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI SIGKILLed between writing its record and moving next_id leaves a record past
    the counter: the server must still run it, and the next ID must step over it."""
    ids = build_state(sky)
    from sky_mini import client
    from sky_mini.paths import get_paths
    from sky_mini.spec import TaskSpec

    monkeypatch.setenv("SKY_MINI_HOME", sky.home)
    orphan = client.submit_job(get_paths(), TaskSpec(run="echo orphan").to_json(), "o")
    with open(os.path.join(sky.home, "jobs", "next_id"), "w") as handle:
        handle.write(f"{orphan.id}\n")  # as if the CLI died before moving the counter
    assert orphan.id == ids[-1] + 1
    sky.serve_foreground()
    sky.wait_job(orphan.id, ("SUCCEEDED",))
    assert launch_async(sky) == orphan.id + 1
