"""Memory limits without a writable cgroup: the watchdog's backstop and its evidence.

Where no memory cgroup can be written (Docker's read-only ``/sys/fs/cgroup``), the
executor's watchdog samples the job tree's RSS. Sampling alone cannot stop one large
allocation: page faults fill ~3 GB/s, so a 300 MB ``bytearray`` on a 64 MiB limit was seen
at 163 MiB before a 50 ms sample caught it. Two things close that gap:

- ``RLIMIT_DATA`` (counts private writable mappings, anonymous ``mmap`` included, since
  Linux 4.7) is set to the job's limit in every job process: an allocation that would take
  a process over the limit is refused (Python raises ``MemoryError``) instead of filling
  memory. It is per process, so a tree of processes is still the sampler's job.
- the sampler reads only the job tree's ``/proc/PID/statm``: every 20 ms, and every 4 ms
  once the tree is past half its limit.

A refused allocation usually ends the program with an error message, not a signal, so the
executor looks for the usual wording in what the job wrote to its log during this run and
records ``KILLED``/``memory_limit`` with the figure.
"""

from __future__ import annotations

import os
import resource

WATCHDOG_FAST_INTERVAL_SECONDS = 0.004  # once the tree is past half its limit
WATCHDOG_CALM_INTERVAL_SECONDS = 0.02  # below half: RLIMIT_DATA caps each process anyway
WATCHDOG_SLOW_INTERVAL_SECONDS = 0.05  # the old sampler: what the negative control runs
DISABLE_TOKEN = "memguard"
LOG_TAIL_BYTES = 64 * 1024
REFUSAL_MARKERS = (
    # Specific wordings only: a job that merely prints "memory" must not be called killed.
    b"MemoryError",  # Python
    b"Cannot allocate memory",  # strerror(ENOMEM): C programs, shells, coreutils
    b"std::bad_alloc",  # C++
    b"xmalloc: cannot allocate",  # bash
    b"runtime: out of memory",  # Go
    b"memory allocation of",  # Rust's alloc error handler ("... bytes failed")
)


def enabled(disabled: frozenset[str]) -> bool:
    """False under ``SKY_MINI_DISABLE=memguard`` (test only: no backstop, 50 ms sampling)."""
    return DISABLE_TOKEN not in disabled


def watchdog_interval(disabled: frozenset[str], last_rss: int, limit: int | None) -> float:
    """How often the watchdog samples a limited job's tree: every 4 ms once it uses more
    than half its limit, else every 20 ms (each process is capped by RLIMIT_DATA, so only
    a tree of several processes can race past the limit from below half)."""
    if not enabled(disabled):
        return WATCHDOG_SLOW_INTERVAL_SECONDS
    if limit is not None and last_rss * 2 >= limit:
        return WATCHDOG_FAST_INTERVAL_SECONDS
    return WATCHDOG_CALM_INTERVAL_SECONDS


def apply_data_limit(limit_bytes: int) -> bool:
    """In a job process before ``exec``: refuse allocations over ``limit_bytes``.

    Returns False where the limit cannot be set (the sampler still enforces the limit).
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit_bytes = min(limit_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, hard))
        return True
    except (OSError, ValueError):
        return False


def log_size(path: str) -> int:
    """Where this run's output starts in the job's (appended) log."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def allocation_refused(log_path: str, since: int) -> bool:
    """Did the job report a refused allocation in the log it wrote since ``since``?"""
    try:
        with open(log_path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            start = max(since, end - LOG_TAIL_BYTES)
            handle.seek(start)
            tail = handle.read()
    except OSError:
        return False
    return any(marker in tail for marker in REFUSAL_MARKERS)
