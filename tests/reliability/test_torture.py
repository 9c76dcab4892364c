"""Crash torture: bursts of real ``jobs launch --async`` CLIs while servers and CLIs are
SIGKILLed at random moments. Seeded and replayable:

    SKY_MINI_TORTURE_SEED=1234 SKY_MINI_TORTURE_ROUNDS=500 pytest tests/reliability/test_torture.py

Invariants checked after every round: every ID a CLI printed is a record carrying that CLI's
tag (so never reused or overwritten); the records are exactly 1..N (dense: a killed CLI may
leave a record it never printed, never a hole or a duplicate); every record parses; no process
of a killed server instance survives; a server is healthy. Every ``DRAIN_EVERY`` rounds and at
the end, every job must reach a terminal state (PENDING ones run).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from tests.helpers import SkyMini, marked_pids, pid_alive, wait_for
from tests.reliability.common import all_records
from tests.reliability.conftest import report

DEFAULT_ROUNDS = 200
DRAIN_EVERY = 25
KILL_BOUND_SECONDS = 5.0
TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "CANCELLED", "KILLED"}


def live_server_pid(sky: SkyMini) -> int | None:
    """The server's PID while it runs. A SIGKILLed server stays a zombie until init reaps
    it (seconds, here) and its status.json still says "running": neither means it runs."""
    from sky_mini.state import is_locked

    pid = sky.server_pid()
    if pid is None or not pid_alive(pid):
        return None
    return pid if is_locked(os.path.join(sky.home, "server", "lock")) else None


def server_tree(sky: SkyMini) -> tuple[int, str, set[int]] | None:
    status = sky.status()
    pid = live_server_pid(sky)
    if pid is None or status is None:
        return None
    tree = {pid}
    try:
        tree |= {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return None
    return pid, str(status["instance_id"]), tree


def check_records(sky: SkyMini, printed: dict[int, str], summary: str) -> dict[int, dict[str, Any]]:
    records = all_records(sky)  # every record parses, or this raises
    ids = sorted(records)
    assert ids == list(range(1, len(ids) + 1)), f"{summary}: IDs not dense: {ids}"
    for job_id, tag in printed.items():
        assert job_id in records, f"{summary}: printed ID {job_id} has no record"
        got = records[job_id].get("env", {}).get("TORTURE_TAG")
        assert got == tag, f"{summary}: job {job_id} belongs to {got}, but {tag} printed it"
    return records


def wait_drained(sky: SkyMini, summary: str) -> dict[int, dict[str, Any]]:
    def drained() -> dict[int, dict[str, Any]] | None:
        records = all_records(sky)
        return records if all(r["status"] in TERMINAL for r in records.values()) else None

    if live_server_pid(sky) is None:
        sky.run("api", "start", "--idle-minutes", "off", check=True)
    records: dict[int, dict[str, Any]] = wait_for(drained, 90, f"{summary}: every job to finish")
    for job_id, record in records.items():
        ok = record["status"] == "SUCCEEDED" or record.get("reason_code") == "supervisor_lost"
        assert ok, f"{summary}: job {job_id} ended {record['status']}: {record.get('reason')}"
    return records


@pytest.mark.slow
def test_crash_torture(sky: SkyMini) -> None:
    seed = int(os.environ.get("SKY_MINI_TORTURE_SEED") or random.SystemRandom().randrange(10**6))
    rounds = int(os.environ.get("SKY_MINI_TORTURE_ROUNDS") or DEFAULT_ROUNDS)
    rng = random.Random(seed)
    banner = f"torture: {rounds} rounds, seed {seed}"
    report(banner)
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    printed: dict[int, str] = {}
    counts = {"server_kills": 0, "cli_kills": 0, "clis": 0, "unprinted_records": 0}
    started = time.monotonic()
    for round_no in range(1, rounds + 1):
        summary = f"{banner}: round {round_no}"
        action = rng.choices(["server", "clis", "both", "none"], [3, 4, 2, 1])[0]
        tree = server_tree(sky)
        burst = []
        for i in range(rng.randint(2, 4)):
            tag = f"r{round_no}-c{i}"
            env = {**sky.env, "TORTURE_TAG": tag}
            proc = subprocess.Popen(
                [sys.executable, "-m", "sky_mini", "jobs", "launch", "--async"]
                + ["--cpus", "0.1", "--", "true"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            burst.append((proc, tag))
        counts["clis"] += len(burst)
        time.sleep(rng.uniform(0.0, 0.3))  # the random moment of the crash (chaos, not a wait)
        if action in ("clis", "both"):
            for proc, _ in rng.sample(burst, rng.randint(1, len(burst))):
                proc.send_signal(signal.SIGKILL)
                counts["cli_kills"] += 1
        if action in ("server", "both") and tree is not None:
            pid, instance, pids = tree
            os.kill(pid, signal.SIGKILL)
            counts["server_kills"] += 1

            def old_instance_gone(pids: set[int] = pids, instance: str = instance) -> bool:
                return not any(pid_alive(p) for p in pids) and not marked_pids(
                    f"{sky.key}:{instance}:"
                )

            wait_for(
                old_instance_gone,
                KILL_BOUND_SECONDS,
                f"{summary}: processes of killed instance {instance} to be gone",
            )
        for proc, tag in burst:
            out, err = proc.communicate(timeout=60)
            if proc.returncode == 0:
                job_id = int(out.decode().strip())
                assert job_id not in printed, f"{summary}: ID {job_id} printed twice"
                printed[job_id] = tag
            else:
                assert proc.returncode in (-signal.SIGKILL, 1), (summary, proc.returncode, err)
                assert b"Traceback" not in err, (summary, err)
        check_records(sky, printed, summary)
        if live_server_pid(sky) is None:
            sky.run("api", "start", "--idle-minutes", "off", check=True)
        assert live_server_pid(sky) and sky.status_ok(), f"{summary}: server not healthy"
        if round_no % DRAIN_EVERY == 0 or round_no == rounds:
            records = wait_drained(sky, summary)
            counts["unprinted_records"] = len(set(records) - set(printed))
    elapsed = time.monotonic() - started
    records = check_records(sky, printed, banner)
    result = {
        "seed": seed,
        "rounds": rounds,
        "seconds": round(elapsed, 1),
        "jobs": len(records),
        **counts,
    }
    report(f"torture result: {json.dumps(result)}")


@pytest.mark.parametrize("damage", ["hole", "reused"])
def test_negative_control_invariants_catch_holes_and_reuse(
    tmp_path: os.PathLike[str], damage: str
) -> None:
    """STYLE 18: the checks above do fail on a hole in the IDs or an overwritten record."""
    sky = SkyMini(home=os.path.join(str(tmp_path), "home"))
    os.makedirs(os.path.join(sky.home, "jobs"))
    ids = [1, 2, 4] if damage == "hole" else [1, 2, 3]
    for job_id in ids:
        with open(os.path.join(sky.home, "jobs", f"{job_id}.json"), "w") as handle:
            tag = "someone-else" if damage == "reused" and job_id == 2 else f"t{job_id}"
            json.dump({"id": job_id, "env": {"TORTURE_TAG": tag}}, handle)
    with pytest.raises(AssertionError, match="not dense" if damage == "hole" else "belongs to"):
        check_records(sky, {1: "t1", 2: "t2"}, "control")


def test_stale_status_of_a_dead_server_is_not_read_as_the_new_one(
    tmp_path: os.PathLike[str],
) -> None:
    """Found by the torture: just after a SIGKILL, a new server holds the lock but the dead
    one's status.json still says "running"; `api start` reported the dead PID as running."""
    from sky_mini.client import read_status
    from sky_mini.paths import Paths, ensure_dirs
    from sky_mini.state import flocked

    paths = Paths(os.path.join(str(tmp_path), "home"))
    ensure_dirs(paths)
    with open(paths.server_status, "w") as handle:
        json.dump({"state": "running", "pid": 4194304}, handle)  # the dead predecessor
    with flocked(paths.server_lock) as fd:  # we are the new server, mid start-up
        os.write(fd, f"{os.getpid()}\n".encode())
        assert read_status(paths) is None
        with open(paths.server_status, "w") as handle:
            json.dump({"state": "running", "pid": os.getpid()}, handle)
        assert read_status(paths) == {"state": "running", "pid": os.getpid()}
    assert read_status(paths) is None  # lock released: no server
