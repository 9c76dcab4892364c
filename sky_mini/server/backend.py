"""The seam between the server and where jobs run.

The server's tick loop talks to a :class:`Backend` only: it asks for free capacity, launches
a job, asks for a stop, and collects :class:`BackendEvent`s. :class:`~sky_mini.server.local.
LocalBackend` runs jobs in this machine's executors; a cluster backend (Slurm: ``sbatch`` to
launch, ``scancel`` to stop, ``squeue --json`` polled for events) implements the same methods
without touching the CLI, the store or the tick loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sky_mini.models import JobRecord


@dataclass
class BackendEvent:
    """``started`` (a phase of the job began: pid, pgid, create_time, phase, ...) or
    ``finished`` (status, reason, reason_code, exit_code, peak_memory_bytes)."""

    kind: str
    job_id: int
    data: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def start(self) -> None:
        """Bring up whatever runs jobs (fork executors, check the cluster is reachable)."""

    def filenos(self) -> list[int]:
        """Descriptors the tick loop should wait on for events."""

    def free_slots(self) -> int:
        """How many more jobs can start now (capacity is checked separately)."""

    def launch(self, job: JobRecord, payload: dict[str, Any]) -> str:
        """Start ``job``; return where it runs (an executor name, a cluster job ID)."""

    def stop(self, job_id: int, reason: str, grace: float) -> None:
        """TERM, then KILL after ``grace`` seconds. ``reason``: cancel | shutdown."""

    def poll(self) -> list[BackendEvent]:
        """Events that arrived since the last call."""

    def child_exited(self, pid: int, status: int) -> list[BackendEvent]:
        """A child of the server was reaped; return events if it was one of ours."""

    def maintain(self) -> list[str]:
        """Replace what died; return log lines describing what was done."""

    def components(self) -> list[dict[str, Any]]:
        """One row per process the backend runs, for ``api status``."""

    def shutdown(self, grace: float) -> None:
        """Stop every job (reason ``shutdown``) and then the executors themselves."""

    def is_stopped(self) -> bool:
        """True once everything :meth:`shutdown` stopped has exited."""
