"""When to ask Slurm again: one query per poll for every job, and a poll that backs off.

The interval starts at ``POLL_MIN_SECONDS``, grows by ``POLL_GROWTH`` each poll that saw no
change up to ``POLL_MAX_SECONDS``, and drops back to the minimum when something changed or a
job was submitted or cancelled. A failed query doubles the wait up to
``POLL_FAILED_MAX_SECONDS``; it never changes a job (sisyphus#108, submitit#1759: a poll per
job per second is what hammers slurmctld).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

POLL_MIN_SECONDS = float(os.environ.get("SKY_MINI_SLURM_POLL_SECONDS", "1.0"))
POLL_MAX_SECONDS = 10.0
POLL_GROWTH = 1.5
POLL_FAILED_MAX_SECONDS = 30.0


@dataclass
class PollSchedule:
    interval: float = POLL_MIN_SECONDS
    next_at: float = 0.0
    failures: int = 0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def hurry(self, now: float) -> None:
        """Something happened (submit, cancel): look again soon."""
        self.interval = POLL_MIN_SECONDS
        self.next_at = min(self.next_at, now + POLL_MIN_SECONDS)

    def polled(self, now: float, *, changed: bool) -> None:
        self.failures = 0
        if changed:
            self.interval = POLL_MIN_SECONDS
        else:
            self.interval = min(POLL_MAX_SECONDS, self.interval * POLL_GROWTH)
        self.next_at = now + self.interval

    def failed(self, now: float) -> None:
        self.failures += 1
        self.interval = min(POLL_FAILED_MAX_SECONDS, max(self.interval, POLL_MIN_SECONDS) * 2)
        self.next_at = now + self.interval
