"""Records and enums shared by the client and the server (a leaf module).

A job record is one JSON file. The client creates it (status PENDING); from then on only the
server writes it. ``SCHEMA_VERSION`` is stored in every file; :func:`job_from_json` reads every
version this code has ever written and refuses newer ones.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    FAILED_SETUP = "FAILED_SETUP"
    CANCELLED = "CANCELLED"
    KILLED = "KILLED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_failed(self) -> bool:
        return self.is_terminal and self is not JobStatus.SUCCEEDED

    @property
    def is_active(self) -> bool:
        """Holding (or about to hold) an executor and its reservation."""
        return self in (JobStatus.STARTING, JobStatus.RUNNING)


_TERMINAL = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.FAILED_SETUP,
        JobStatus.CANCELLED,
        JobStatus.KILLED,
    }
)


class ReasonCode(enum.StrEnum):
    """Why a job was KILLED (and a few machine-readable causes for other statuses)."""

    OOM = "oom"
    MEMORY_LIMIT = "memory_limit"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    SUPERVISOR_LOST = "supervisor_lost"
    CANCELLED = "cancelled"
    EXIT_CODE = "exit_code"
    SIGNAL = "signal"
    SETUP_FAILED = "setup_failed"
    CANNOT_START = "cannot_start"
    NEVER_FITS = "never_fits"
    DEPENDENCY_FAILED = "dependency_failed"
    NODE_FAILURE = "node_failure"
    PREEMPTED = "preempted"
    GROUP_DONE = "group_done"  # an auxiliary task stopped once the group's primary tasks ended


class FutureSchemaError(ValueError):
    """A record written by a newer sky-mini than this one."""


@dataclass(init=False, repr=False, eq=False)  # methods written out below: see __init__
class JobRecord:
    """One job as ``jobs/<id>.json`` stores it (clients write intents, the server facts)."""

    id: int
    task: dict[str, Any]
    name: str
    log_path: str
    submitted_at: float
    status: JobStatus = JobStatus.PENDING
    reason: str | None = None
    reason_code: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None
    pid_create_time: float | None = None
    pgid: int | None = None
    peak_memory_bytes: int | None = None
    executor: str | None = None
    instance_id: str | None = None
    cgroup_paths: list[str] = field(default_factory=list)
    memory_mechanism: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # the submitting client's environment
    # Batch features (issue 15). Absent in older records: the defaults are what they meant.
    attempt: int = 1
    attempts: list[dict[str, Any]] = field(default_factory=list)  # one per finished attempt
    retry_at: float | None = None  # a retry waiting for its backoff stays PENDING until then
    queue: str | None = None
    scheduled_at: float | None = None
    after: list[int] = field(default_factory=list)  # runs once all of these SUCCEEDED
    pipeline: str | None = None  # the pipeline or job group this job belongs to
    # A job group (execution: parallel): {id (its first job), size, primary, termination_delay}
    group: dict[str, Any] | None = None
    infra: str = "local"  # local | slurm | slurm/<partition>: which backend runs it
    slurm_job_id: str | None = None
    schema: int = SCHEMA_VERSION

    # Written out rather than generated: a dataclass build execs its methods' source at
    # import, ~4 ms of every `jobs launch --async`. tests/unit/test_models.py checks that
    # the parameters match the fields above, in order and with the same defaults.
    def __init__(
        self,
        id: int,  # noqa: A002 - the record's field name
        task: dict[str, Any],
        name: str,
        log_path: str,
        submitted_at: float,
        status: JobStatus = JobStatus.PENDING,
        reason: str | None = None,
        reason_code: str | None = None,
        exit_code: int | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
        pid: int | None = None,
        pid_create_time: float | None = None,
        pgid: int | None = None,
        peak_memory_bytes: int | None = None,
        executor: str | None = None,
        instance_id: str | None = None,
        cgroup_paths: list[str] | None = None,
        memory_mechanism: str | None = None,
        env: dict[str, str] | None = None,
        attempt: int = 1,
        attempts: list[dict[str, Any]] | None = None,
        retry_at: float | None = None,
        queue: str | None = None,
        scheduled_at: float | None = None,
        after: list[int] | None = None,
        pipeline: str | None = None,
        group: dict[str, Any] | None = None,
        infra: str = "local",
        slurm_job_id: str | None = None,
        schema: int = SCHEMA_VERSION,
    ) -> None:
        self.id = id
        self.task = task
        self.name = name
        self.log_path = log_path
        self.submitted_at = submitted_at
        self.status = status
        self.reason = reason
        self.reason_code = reason_code
        self.exit_code = exit_code
        self.started_at = started_at
        self.finished_at = finished_at
        self.pid = pid
        self.pid_create_time = pid_create_time
        self.pgid = pgid
        self.peak_memory_bytes = peak_memory_bytes
        self.executor = executor
        self.instance_id = instance_id
        self.cgroup_paths = [] if cgroup_paths is None else cgroup_paths
        self.memory_mechanism = memory_mechanism
        self.env = {} if env is None else env
        self.attempt = attempt
        self.attempts = [] if attempts is None else attempts
        self.retry_at = retry_at
        self.queue = queue
        self.scheduled_at = scheduled_at
        self.after = [] if after is None else after
        self.pipeline = pipeline
        self.group = group
        self.infra = infra
        self.slurm_job_id = slurm_job_id
        self.schema = schema

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        mine = tuple(getattr(self, name) for name in _JOB_FIELD_ORDER)
        return mine == tuple(getattr(other, name) for name in _JOB_FIELD_ORDER)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _JOB_FIELD_ORDER)
        return f"JobRecord({shown})"

    def to_json(self) -> dict[str, Any]:
        # A shallow copy, not dataclasses.asdict: asdict deep-copies the task and the
        # environment, a third of the server's time per record write in a drain.
        data = {name: getattr(self, name) for name in _JOB_FIELD_ORDER}
        data["status"] = self.status.value
        return data

    def public_json(self) -> dict[str, Any]:
        """The ``--json`` view: the contract's fields first, internals left out."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "exit_code": self.exit_code,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": self.duration(),
            "pid": self.pid,
            "peak_memory_bytes": self.peak_memory_bytes,
            "log_path": self.log_path,
            "attempt": self.attempt,
            "attempts": list(self.attempts),
            "max_retries": self.max_retries(),
            "queue": self.queue,
            "scheduled_at": self.scheduled_at,
            "after": list(self.after),
            "pipeline": self.pipeline,
            "group": self.group,
            "infra": self.infra,
            "slurm_job_id": self.slurm_job_id,
            "executor": self.executor,
            "memory_mechanism": self.memory_mechanism,
            "resources": self.task.get("resources", {}),
        }

    def max_retries(self) -> int:
        """How many more attempts a failed attempt may get (``--retries``)."""
        value = self.task.get("retries") or 0  # --retries or job_recovery.max_restarts_on_errors
        return value if isinstance(value, int) and value > 0 else 0

    def duration(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else now
        return None if end is None else max(0.0, end - self.started_at)

    def finish(
        self,
        status: JobStatus,
        *,
        now: float,
        reason: str | None,
        reason_code: str | None,
        exit_code: int | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.reason_code = reason_code
        self.exit_code = exit_code
        self.finished_at = now


_JOB_FIELD_ORDER = tuple(f.name for f in fields(JobRecord))
_JOB_FIELDS = set(_JOB_FIELD_ORDER)


def job_from_json(data: dict[str, Any]) -> JobRecord:
    """Build a record from any schema version this code knows; raise ValueError otherwise."""
    if not isinstance(data, dict):
        raise ValueError("a job record must be a JSON object")
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or schema < 1:
        raise ValueError(f"bad schema version {schema!r}")
    if schema > SCHEMA_VERSION:
        raise FutureSchemaError(
            f"schema version {schema} is newer than this sky-mini understands ({SCHEMA_VERSION})"
        )
    known = {k: v for k, v in data.items() if k in _JOB_FIELDS}
    try:
        known["status"] = JobStatus(known.get("status", "PENDING"))
        record = JobRecord(**known)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a valid job record: {exc}") from exc
    if not isinstance(record.id, int) or record.id < 1:
        raise ValueError(f"bad job id {record.id!r}")
    return record


def exit_code_for(returncode: int) -> int:
    """Shell convention: a death by signal N is exit code 128+N."""
    return 128 - returncode if returncode < 0 else returncode
