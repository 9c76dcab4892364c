"""What Slurm says about a job, parsed defensively, and what it means for a sky-mini job.

Sources, all without accounting (``sacct`` needs slurmdbd):

- ``squeue -h -t all -j ID,ID -O JobID:|,State:|,Reason:|,exit_code:|`` — one call for every
  tracked job (22.05's ``squeue --json`` ignores ``-j``/``-t`` and returns the whole table, so
  it is not used for polling); :func:`parse_squeue`.
- ``scontrol show job ID`` for a job newly finished or missing from squeue;
  :func:`parse_scontrol`.
- ``squeue --json`` in its 22.05 and 23.11+ shapes (lists, ``{set, number}`` objects);
  :func:`normalize_json_job`, for tools and tests.
- the wrapper's exit record, the truth once Slurm has forgotten the job (``MinJobAge``).

:func:`decide` maps them to at most one change (the CONTRACT table). Anything it does not
know changes nothing: a waiter never hangs on an unexpected string, and never ends a job on
one either.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Any

from sky_mini.models import JobStatus, ReasonCode
from sky_mini.units import format_size

# Slurm's base states (job_state_string), for prefix matching of truncated names
# ("OUT_OF_ME+" from sacct's fixed-width columns).
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})
RUNNING_STATES = frozenset({"RUNNING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"})
TRANSIENT_STATES = frozenset({"COMPLETING", "STAGE_OUT", "REQUEUE_FED", "SPECIAL_EXIT"})
FINISHED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "PREEMPTED",
        "DEADLINE",
        "REVOKED",
    }
)
KNOWN_STATES = PENDING_STATES | RUNNING_STATES | TRANSIENT_STATES | FINISHED_STATES
# Pending reasons that mean "never, as asked" (the site does not enforce partition limits at
# submit, so sbatch accepted it): the job is cancelled and ends FAILED_SETUP with the reason.
HOPELESS_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "QOSJobLimit",
    }
)
SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,exit_code:|,Name:|,StartTime:|"


@dataclass(frozen=True)
class SlurmJob:
    """One job as a Slurm tool reported it; ``exit_status`` is the raw wait status."""

    job_id: str
    state: str
    reason: str | None = None
    exit_status: int | None = None  # raw: (code << 8) | signal
    exit_code_text: str | None = None  # "CODE:SIGNAL" as scontrol prints it
    name: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    start_time: float | None = None  # Slurm's StartTime, once it ran (epoch seconds)

    def exit_code_and_signal(self) -> tuple[int | None, int | None]:
        if self.exit_code_text and ":" in self.exit_code_text:
            code, _, sig = self.exit_code_text.partition(":")
            if code.isdigit() and sig.isdigit():
                return int(code), int(sig)
        if self.exit_status is not None and self.exit_status >= 0:
            return (self.exit_status >> 8) & 0xFF, self.exit_status & 0x7F
        return None, None


def normalize_state(raw: str) -> str:
    """``CANCELLED by 0`` → ``CANCELLED``; ``OUT_OF_ME+`` → ``OUT_OF_MEMORY``; lists and
    flags (``COMPLETED,REQUEUED``) → the first base state. Unknown → upper-cased as given."""
    text = raw.strip().upper()
    if not text:
        return ""
    text = re.split(r"[\s,]", text, maxsplit=1)[0]
    if text.endswith("+"):
        stem = text.rstrip("+")
        matches = sorted(s for s in KNOWN_STATES if s.startswith(stem))
        if len(matches) == 1:
            return matches[0]
    return text


def parse_start_time(text: str | None, state: str) -> float | None:
    """``2026-12-01T21:42:02`` (``SLURM_TIME_FORMAT=standard``, this host's time zone) →
    epoch seconds; only for a job that ran (a pending job's StartTime is an estimate)."""
    if not text or state in PENDING_STATES or not state:
        return None
    import time

    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:  # "N/A", "Unknown", another format: no start time
        return None


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """Lines of ``SQUEUE_FORMAT`` output → jobs by Slurm ID (malformed lines skipped)."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0].strip().isdigit():
            continue
        status = parts[3].strip() if len(parts) > 3 else ""
        state = normalize_state(parts[1])
        jobs[parts[0].strip()] = SlurmJob(
            job_id=parts[0].strip(),
            state=state,
            reason=(parts[2].strip() or None) if len(parts) > 2 else None,
            exit_status=int(status) if status.lstrip("-").isdigit() else None,
            name=(parts[4].strip() or None) if len(parts) > 4 else None,
            start_time=parse_start_time(parts[5], state) if len(parts) > 5 else None,
        )
    return jobs


_SCONTROL_PAIR_RE = re.compile(r"(\w+)=(\S*)")


def parse_scontrol(text: str) -> dict[str, SlurmJob]:
    """``scontrol show job`` records (blank-line separated ``Key=Value`` pairs)."""
    jobs: dict[str, SlurmJob] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        pairs = dict(_SCONTROL_PAIR_RE.findall(block))
        job_id = pairs.get("JobId", "")
        if not job_id.isdigit():
            continue
        reason = pairs.get("Reason")
        state = normalize_state(pairs.get("JobState", ""))
        jobs[job_id] = SlurmJob(
            job_id=job_id,
            state=state,
            reason=None if reason in (None, "None", "(null)") else reason,
            exit_code_text=pairs.get("ExitCode"),
            name=pairs.get("JobName"),
            extra=pairs,
            start_time=parse_start_time(pairs.get("StartTime"), state),
        )
    return jobs


def _number(value: Any) -> int | None:
    """22.05: ``5``; 23.11+: ``{"set": true, "infinite": false, "number": 5}``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if value.get("set") is False or value.get("infinite"):
            return None
        return _number(value.get("number"))
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def normalize_json_job(data: dict[str, Any]) -> SlurmJob | None:
    """One element of ``squeue --json``'s ``jobs`` in the 22.05 or 23.11+ shape."""
    job_id = _number(data.get("job_id"))
    if job_id is None:
        return None
    raw_state = data.get("job_state")
    if isinstance(raw_state, list):  # 23.11+: ["OUT_OF_MEMORY"] or ["PENDING", "REQUEUED"]
        raw_state = raw_state[0] if raw_state else ""
    state = normalize_state(str(raw_state or ""))
    exit_raw = data.get("exit_code")
    exit_text = None
    exit_status = None
    if isinstance(exit_raw, dict):  # 23.11+: {status: [..], return_code: {..}, signal: {..}}
        code = _number(exit_raw.get("return_code"))
        sig = _number((exit_raw.get("signal") or {}).get("id"))
        if code is not None:
            exit_text = f"{code}:{sig or 0}"
    else:
        exit_status = _number(exit_raw)
    reason = data.get("state_reason")
    return SlurmJob(
        job_id=str(job_id),
        state=state,
        reason=None if reason in (None, "", "None") else str(reason),
        exit_status=exit_status,
        exit_code_text=exit_text,
        name=str(data["name"]) if data.get("name") is not None else None,
    )


@dataclass(frozen=True)
class JobContext:
    """What sky-mini itself knows about the job when deciding."""

    job_id: int
    memory_bytes: int | None
    timeout_seconds: float | None
    cancel_requested: bool
    exit_record: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """``kind``: ``pending`` (reason), ``running``, ``finished`` (status …), ``refused``
    (pending for ever: cancel it, then finished), ``none``."""

    kind: str
    status: JobStatus | None = None
    reason: str | None = None
    reason_code: str | None = None
    exit_code: int | None = None
    note: str | None = None  # a line for the server log (unknown state, …)


NO_CHANGE = Decision("none")


def logs_hint(job_id: int) -> str:
    return f"see its log: sky-mini jobs logs {job_id}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def decide(job: SlurmJob | None, ctx: JobContext) -> Decision:
    """The CONTRACT's mapping. ``job`` None means Slurm did not report it this time."""
    if job is None:
        return decide_from_exit_record(ctx) if ctx.exit_record else NO_CHANGE
    state = job.state
    if state in PENDING_STATES:
        reason = job.reason if job.reason and job.reason != "None" else state.title()
        if reason in HOPELESS_REASONS:
            return Decision(
                "refused",
                JobStatus.FAILED_SETUP,
                f"Slurm can never run it as asked (pending reason {reason}: more CPUs, memory, "
                "nodes or time than the partition allows); lower resources or pick another "
                "partition",
                ReasonCode.CANNOT_START.value,
            )
        return Decision("pending", reason=f"Slurm: {reason}")
    if state in RUNNING_STATES:
        return Decision("running")
    if state in TRANSIENT_STATES:
        return NO_CHANGE
    if state not in FINISHED_STATES:
        return Decision("none", note=f"Slurm reported an unknown state {job.state!r}; unchanged")
    return decide_finished(job, ctx)


def decide_finished(job: SlurmJob, ctx: JobContext) -> Decision:
    code, sig = job.exit_code_and_signal()
    record = ctx.exit_record or {}
    if record.get("exit_code") is not None:
        exit_code: int | None = int(record["exit_code"])
    elif sig:
        exit_code = 128 + sig
    else:
        exit_code = code
    state = job.state
    if state == "OUT_OF_MEMORY":
        return out_of_memory(ctx, exit_code)
    if state == "TIMEOUT" or record.get("timed_out"):
        return timed_out(ctx, exit_code, by_slurm=state == "TIMEOUT")
    if ctx.cancel_requested:
        return Decision(
            "finished", JobStatus.CANCELLED, "cancelled by user", ReasonCode.CANCELLED.value,
            exit_code,
        )  # fmt: skip
    if state == "CANCELLED":
        return Decision(
            "finished",
            JobStatus.CANCELLED,
            "cancelled outside sky-mini (scancel or a Slurm administrator)",
            ReasonCode.CANCELLED.value,
            exit_code,
        )
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        return Decision(
            "finished",
            JobStatus.KILLED,
            f"Slurm reported {state}: the node running it failed; submit it again",
            "node_failure",
            exit_code,
        )
    if state == "PREEMPTED":
        return Decision(
            "finished",
            JobStatus.KILLED,
            "preempted by Slurm (not requeued); submit it again",
            "preempted",
            exit_code,
        )
    if state in ("DEADLINE", "REVOKED"):
        return Decision(
            "finished",
            JobStatus.KILLED,
            f"Slurm ended it: {state}",
            ReasonCode.TIMEOUT.value if state == "DEADLINE" else ReasonCode.CANCELLED.value,
            exit_code,
        )
    return from_exit(ctx, record, exit_code, completed=state == "COMPLETED")


def out_of_memory(ctx: JobContext, exit_code: int | None) -> Decision:
    if ctx.memory_bytes:
        return Decision(
            "finished",
            JobStatus.KILLED,
            f"out of memory: over its limit of {format_size(ctx.memory_bytes)} (Slurm "
            "OUT_OF_MEMORY, cgroup) — raise resources.memory",
            ReasonCode.MEMORY_LIMIT.value,
            exit_code,
        )
    return Decision(
        "finished",
        JobStatus.KILLED,
        "out of memory: Slurm reported OUT_OF_MEMORY with no job limit set (the node's "
        "default per-CPU memory); set resources.memory",
        ReasonCode.OOM.value,
        exit_code,
    )


def timed_out(ctx: JobContext, exit_code: int | None, *, by_slurm: bool) -> Decision:
    limit = f"{ctx.timeout_seconds:g}s " if ctx.timeout_seconds else ""
    who = "Slurm's time limit (--time)" if by_slurm else "resources.timeout"
    return Decision(
        "finished",
        JobStatus.KILLED,
        f"timed out after {limit}({who}) — raise it or make the job faster",
        ReasonCode.TIMEOUT.value,
        exit_code,
    )


def from_exit(
    ctx: JobContext, record: dict[str, Any], exit_code: int | None, *, completed: bool
) -> Decision:
    """COMPLETED/FAILED (or only the wrapper's record): the job's own exit decides."""
    phase = "setup" if record.get("phase") == "setup" else "job"
    if exit_code == 0 and (completed or record):
        if ctx.cancel_requested:
            return Decision(
                "finished", JobStatus.CANCELLED, "cancelled by user", ReasonCode.CANCELLED.value,
                0,
            )  # fmt: skip
        return Decision("finished", JobStatus.SUCCEEDED, exit_code=0)
    if exit_code is None:
        return Decision(
            "finished",
            JobStatus.FAILED,
            f"Slurm reported it {'COMPLETED' if completed else 'FAILED'} without an exit code; "
            + logs_hint(ctx.job_id),
            ReasonCode.EXIT_CODE.value,
            None,
        )
    status = JobStatus.FAILED_SETUP if phase == "setup" else JobStatus.FAILED
    sig = record.get("signal")
    if isinstance(sig, int) and sig:
        return Decision(
            "finished",
            status,
            f"{phase} killed by signal {sig} {signal_name(sig)}; " + logs_hint(ctx.job_id),
            ReasonCode.SIGNAL.value,
            exit_code,
        )
    code = ReasonCode.SETUP_FAILED if phase == "setup" else ReasonCode.EXIT_CODE
    return Decision(
        "finished",
        status,
        f"{phase} exited with code {exit_code}; " + logs_hint(ctx.job_id),
        code.value,
        exit_code,
    )


def decide_from_exit_record(ctx: JobContext) -> Decision:
    """Slurm forgot the job: the wrapper's record is the evidence (never SUCCEEDED without)."""
    record = ctx.exit_record or {}
    exit_code = record.get("exit_code")
    exit_code = int(exit_code) if isinstance(exit_code, int) else None
    if record.get("timed_out"):
        return timed_out(ctx, exit_code, by_slurm=False)
    if ctx.cancel_requested:
        return Decision(
            "finished", JobStatus.CANCELLED, "cancelled by user", ReasonCode.CANCELLED.value,
            exit_code,
        )  # fmt: skip
    return from_exit(ctx, record, exit_code, completed=False)
