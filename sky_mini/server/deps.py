"""Job dependencies (``--after``, pipelines): may a PENDING job start, wait, or never run?

Pure functions over a lookup of job outcomes, so a tick can be tested without a server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sky_mini.models import JobRecord, JobStatus, ReasonCode


@dataclass(frozen=True)
class Gate:
    """``wait`` (with a reason), ``go``, or ``cancel`` (with the reason to record)."""

    action: str
    reason: str | None = None


GO = Gate("go")


def dependency_gate(record: JobRecord, lookup: Callable[[int], JobRecord | None]) -> Gate:
    """All of ``record.after`` SUCCEEDED -> go; one ended otherwise (or is gone) -> cancel,
    naming the job that failed first in the chain; else wait for the unfinished ones."""
    waiting: list[int] = []
    for dep_id in record.after:
        dep = lookup(dep_id)
        if dep is None:
            return Gate(
                "cancel",
                f"not run: job {dep_id}, which it runs after, no longer exists",
            )
        if dep.status is JobStatus.SUCCEEDED:
            continue
        if dep.status.is_terminal:
            if dep.reason_code == ReasonCode.DEPENDENCY_FAILED.value and dep.reason:
                return Gate("cancel", dep.reason)  # keep naming the job that failed first
            return Gate(
                "cancel",
                f"not run: job {dep_id} ({dep.name}), which it runs after, ended "
                f"{dep.status.value}",
            )
        waiting.append(dep_id)
    if waiting:
        return Gate("wait", "waiting for " + ", ".join(f"job {j}" for j in waiting))
    return GO
