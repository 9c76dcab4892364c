"""The seam between the server and where jobs run.

The server's tick loop talks to a :class:`Backend` only: it asks for free capacity, launches
a job, asks for a stop, and collects :class:`BackendEvent`s. :class:`~sky_mini.server.backends.
local.LocalBackend` runs jobs in this machine's executors; a cluster backend (Slurm: ``sbatch``
to launch, ``scancel`` to stop, ``squeue`` polled for events) implements the same methods
without touching the CLI, the store or the tick loop. A job's record names its backend in
``infra`` (``"local"`` by default); a backend answers for the records whose ``infra`` it
:meth:`~Backend.owns`.
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


def infra_kind(infra: str | None) -> str:
    """The backend part of an ``infra`` value: ``slurm/debug`` -> ``slurm``; empty -> local."""
    return (infra or "local").split("/", 1)[0]


class Backend(Protocol):
    name: str
    """The ``infra`` kind it runs (``local``, ``slurm``)."""

    def owns(self, record: JobRecord) -> bool:
        """True if ``record.infra`` names this backend (see :func:`infra_kind`)."""

    def start(self) -> None:
        """Bring up whatever runs jobs (fork executors, check the cluster is reachable)."""

    def reattach(self, records: list[JobRecord]) -> list[int]:
        """A previous server left these jobs STARTING/RUNNING; take back what still runs.

        Returns the IDs it tracks again (their events follow from :meth:`poll`). The server
        records every other one ``KILLED``/``supervisor_lost``. The local backend re-attaches
        nothing: an executor dies with its server, so it kills what is left of each job (only
        if its recorded PID still names the same process) and returns ``[]``. Work handed to a
        cluster outlives the server, so a cluster backend returns the jobs it still knows.
        """

    def filenos(self) -> list[int]:
        """Descriptors the tick loop should wait on for events (pipes, child sentinels)."""

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
        """The backend's own rows for ``api status``: one per process (an executor) or
        per remote part (a cluster's controller), each with ``name``, ``kind``, ``pid``,
        ``state``, ``job_id``, ``started_at``, ``restarts`` and ``should_run`` (a row that
        should run and does not makes the server degraded)."""

    def shutdown(self, grace: float) -> None:
        """Stop every job (reason ``shutdown``) and then the executors themselves."""

    def is_stopped(self) -> bool:
        """True once everything :meth:`shutdown` stopped has exited."""
