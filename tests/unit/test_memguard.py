"""The watchdog's backstop: RLIMIT_DATA refuses a big allocation; the log says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sky_mini import memguard

MiB = 1024 * 1024
BIG = "x = bytearray(300 * 2**20); print(len(x))"


def test_data_limit_refuses_one_big_allocation_in_a_child_and_its_children() -> None:
    limited = subprocess.run(
        ["sh", "-c", f"{sys.executable} -c '{BIG}'"],
        preexec_fn=lambda: memguard.apply_data_limit(64 * MiB),  # noqa: PLW1509
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert limited.returncode == 1 and "MemoryError" in limited.stderr, limited
    # The negative control: without the limit the same allocation succeeds.
    free = subprocess.run([sys.executable, "-c", BIG], capture_output=True, timeout=60)
    assert free.returncode == 0


def test_only_this_runs_output_counts_as_evidence(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"attempt 1\nMemoryError\n")
    since = memguard.log_size(str(log))
    assert memguard.allocation_refused(str(log), 0)
    assert not memguard.allocation_refused(str(log), since)
    with log.open("ab") as handle:
        handle.write(b"fine\nran out of memory budget? no: this is just text\n")
    assert not memguard.allocation_refused(str(log), since)
    with log.open("ab") as handle:
        handle.write(b"sh: fork: Cannot allocate memory\n")
    assert memguard.allocation_refused(str(log), since)
    assert not memguard.allocation_refused(str(tmp_path / "missing.log"), 0)


def test_sampling_pace() -> None:
    none: frozenset[str] = frozenset()
    assert memguard.watchdog_interval(none, 10 * MiB, 64 * MiB) == 0.02
    assert memguard.watchdog_interval(none, 32 * MiB, 64 * MiB) == 0.004
    off = frozenset({"memguard"})
    assert memguard.watchdog_interval(off, 60 * MiB, 64 * MiB) == 0.05
    assert not memguard.enabled(off)
