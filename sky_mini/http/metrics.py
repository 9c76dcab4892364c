"""``/metrics`` and ``$SKY_MINI_HOME/metrics.prom``: the Prometheus text exposition format.

Everything is read from the files the CLI reads (the server's status snapshot, job records,
service facts); nothing asks the server. Job counts and the histograms cover the jobs still
recorded (finished jobs are pruned after ``jobs.retention_days``), so they are gauges and
"histograms of the retained history": a prune shows up to Prometheus as a counter reset.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sky_mini.http.reader import JobIndex, JobSummary, read_server_status
from sky_mini.models import JobStatus
from sky_mini.paths import Paths

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
MEMORY_BUCKETS = tuple(float(2**n) for n in (24, 26, 28, 30, 32, 34))  # 16 MiB .. 16 GiB


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: dict[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}"


def number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class Exposition:
    """Collects families in order; :meth:`text` renders them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, pairs: dict[str, str] | None = None) -> None:
        self.lines.append(f"{name}{labels(pairs or {})} {number(value)}")

    def gauge(
        self, name: str, help_text: str, rows: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        self.family(name, "gauge", help_text)
        for pairs, value in rows:
            self.sample(name, value, pairs)

    def histogram(
        self, name: str, help_text: str, values: Sequence[float], buckets: Sequence[float]
    ) -> None:
        self.family(name, "histogram", help_text)
        for bound in (*buckets, math.inf):
            count = sum(1 for v in values if v <= bound)
            le = "+Inf" if math.isinf(bound) else repr(bound)  # as client libraries write it
            self.sample(f"{name}_bucket", count, {"le": le})
        self.sample(f"{name}_sum", sum(values))
        self.sample(f"{name}_count", len(values))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(
    paths: Paths,
    jobs: list[JobSummary],
    status: dict[str, Any] | None,
    services: dict[str, Any] | None,
) -> str:
    """The whole exposition from what was read (see :func:`collect`)."""
    out = Exposition()
    out.gauge(
        "sky_mini_up",
        "1 while the sky-mini server's status file says it runs.",
        [({}, 1.0 if status else 0.0)],
    )
    infra = str((status or {}).get("backend") or "local")
    by_status = Counter(j.status for j in jobs)
    out.gauge(
        "sky_mini_jobs",
        "Recorded jobs by status and infra (finished jobs until retention prunes them).",
        [({"status": s.value, "infra": infra}, float(by_status[s])) for s in JobStatus],
    )
    out.gauge(
        "sky_mini_queue_depth",
        "Jobs waiting for an executor or resources (PENDING).",
        [({}, float(by_status[JobStatus.PENDING]))],
    )
    out.gauge(
        "sky_mini_jobs_running",
        "Jobs holding an executor (STARTING or RUNNING).",
        [({}, float(by_status[JobStatus.STARTING] + by_status[JobStatus.RUNNING]))],
    )
    components = [c for c in (status or {}).get("components") or [] if isinstance(c, dict)]
    executors = Counter(str(c.get("state")) for c in components if c.get("kind") == "job-executor")
    out.gauge(
        "sky_mini_executors",
        "Job executors by state (busy runs a job, idle waits for one).",
        [({"state": s}, float(executors[s])) for s in ("busy", "idle", "dead")],
    )
    finished = [j for j in jobs if j.status.is_terminal]
    out.histogram(
        "sky_mini_job_duration_seconds",
        "Run time of finished jobs that started (retained history).",
        [j.duration for j in finished if j.duration is not None],
        DURATION_BUCKETS,
    )
    killed = Counter(j.reason_code or "unknown" for j in jobs if j.status is JobStatus.KILLED)
    out.gauge(
        "sky_mini_jobs_killed",
        "KILLED jobs by reason_code (retained history).",
        [({"reason_code": code}, float(n)) for code, n in sorted(killed.items())],
    )
    out.histogram(
        "sky_mini_job_peak_memory_bytes",
        "Peak memory of finished jobs (retained history).",
        [float(j.peak_memory_bytes) for j in finished if j.peak_memory_bytes is not None],
        MEMORY_BUCKETS,
    )
    render_services(out, services)
    slurm = (status or {}).get("slurm")
    if isinstance(slurm, dict) and "reachable" in slurm:
        out.gauge(
            "sky_mini_slurm_controller_reachable",
            "1 when the Slurm backend's controller answered its last check.",
            [({}, 1.0 if slurm.get("reachable") else 0.0)],
        )
    return out.text()


def render_services(out: Exposition, services: dict[str, Any] | None) -> None:
    rows = list((services or {}).get("services") or [])
    by_status = Counter(str(r.get("status")) for r in rows)
    out.gauge(
        "sky_mini_services",
        "Services that are up (or stopping), by status.",
        [({"status": s}, float(n)) for s, n in sorted(by_status.items())],
    )
    out.gauge(
        "sky_mini_service_ready_replicas",
        "READY replicas of each service.",
        [({"service": str(r["name"])}, float(r.get("ready_replicas") or 0)) for r in rows],
    )
    out.gauge(
        "sky_mini_service_replicas",
        "Replicas each service asks for.",
        [({"service": str(r["name"])}, float(r.get("total_replicas") or 0)) for r in rows],
    )
    out.gauge(
        "sky_mini_service_replica_restarts",
        "Restarts of each service's replicas since its controller took it.",
        [
            (
                {"service": str(r["name"])},
                float(sum(int(x.get("restarts") or 0) for x in r.get("replicas") or [])),
            )
            for r in rows
        ],
    )
    controller = (services or {}).get("controller") or {}
    out.gauge(
        "sky_mini_services_controller_up",
        "1 while the services-controller runs.",
        [({}, 1.0 if controller.get("running") else 0.0)],
    )


def collect(paths: Paths, index: JobIndex, now: float, *, server_gone: bool = False) -> str:
    """Read the home and render the exposition (``server_gone``: as if no server ran)."""
    from sky_mini.services import build_status

    status = None if server_gone else read_server_status(paths)
    services = build_status(paths, status, now)
    return render_metrics(paths, index.refresh(), status, services)
