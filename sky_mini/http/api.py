"""The read-only JSON API: ``/api/status``, ``/api/jobs``, ``/api/jobs/ID``, its log tail,
``/api/services`` and ``/api/activity`` (the dashboard's chart).

Handlers take the parsed query and return a :class:`Response`; a bad ID or parameter is a
400 or 404 with a JSON ``{"error": ...}`` that says what to send instead. Job views are the
CLI's ``--json`` records (``JobRecord.public_json``): no environment, no task ``secrets``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sky_mini.http.reader import (
    JobIndex,
    active_ids,
    iter_jobs_desc,
    read_job,
    read_server_status,
)
from sky_mini.models import JobRecord, JobStatus
from sky_mini.paths import Paths

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
DEFAULT_TAIL = 100
MAX_TAIL = 5000
MAX_LOG_LINE_CHARS = 4096
ACTIVITY_WINDOW_SECONDS = 3600.0
ACTIVITY_BUCKETS = 12
MAX_JOB_ID_DIGITS = 12


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode())


def error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def one_param(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(400, f"give '{name}' once, not {len(values)} times")
    return values[0]


def int_param(query: dict[str, list[str]], name: str, default: int, highest: int) -> int:
    raw = one_param(query, name)
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) < 1:
        raise BadRequest(400, f"'{name}' must be a whole number from 1 to {highest}, not {raw!r}")
    return min(int(text), highest)


def check_params(query: dict[str, list[str]], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(allowed) - {"token"})
    if unknown:
        choices = ", ".join(allowed) if allowed else "none"
        raise BadRequest(400, f"unknown parameter(s) {', '.join(unknown)}; allowed: {choices}")


def parse_statuses(raw: str | None) -> set[JobStatus] | None:
    if raw is None or not raw.strip():
        return None
    wanted = set()
    for part in raw.split(","):
        name = part.strip().upper()
        try:
            wanted.add(JobStatus(name))
        except ValueError:
            choices = ", ".join(s.value for s in JobStatus)
            raise BadRequest(
                400, f"'{part.strip()[:40]}' is not a job status; use one of {choices}"
            ) from None
    return wanted


def parse_id(raw: str) -> int:
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_JOB_ID_DIGITS) or int(text) < 1:
        raise BadRequest(
            400, f"'{raw[:40]}' is not a job ID; job IDs are positive whole numbers like 42"
        )
    return int(text)


def job_view(record: JobRecord) -> dict[str, Any]:
    return record.public_json()


class Api:
    """Routes ``/api/...`` paths to handlers (GET only; the server checks the method)."""

    def __init__(self, paths: Paths, index: JobIndex) -> None:
        self.paths = paths
        self.index = index

    def handle(self, path: str, query: dict[str, list[str]]) -> Response:
        try:
            return self.route(path, query)
        except BadRequest as exc:
            return error(exc.status, exc.message)

    def route(self, path: str, query: dict[str, list[str]]) -> Response:
        parts = [p for p in path.split("/") if p][1:]  # drop "api"
        if parts == ["status"]:
            check_params(query, ())
            return self.status()
        if parts == ["services"]:
            check_params(query, ())
            return self.services()
        if parts == ["activity"]:
            check_params(query, ())
            return self.activity()
        if parts == ["jobs"]:
            check_params(query, ("status", "limit"))
            return self.jobs(
                parse_statuses(one_param(query, "status")),
                int_param(query, "limit", DEFAULT_LIMIT, MAX_LIMIT),
            )
        if len(parts) == 2 and parts[0] == "jobs":
            check_params(query, ())
            return self.job(parse_id(parts[1]))
        if len(parts) == 3 and parts[0] == "jobs" and parts[2] == "log":
            check_params(query, ("tail",))
            return self.log(parse_id(parts[1]), int_param(query, "tail", DEFAULT_TAIL, MAX_TAIL))
        return error(404, f"no such endpoint {path[:80]!r}; see /api/status, /api/jobs")

    def status(self) -> Response:
        from sky_mini.status import build_report

        snapshot = read_server_status(self.paths)
        if snapshot is None:
            return error(503, "no sky-mini server is running for this home")
        return json_response(build_report(snapshot, time.time()))

    def services(self) -> Response:
        from sky_mini.services import build_status

        return json_response(build_status(self.paths, read_server_status(self.paths), time.time()))

    def jobs(self, statuses: set[JobStatus] | None, limit: int) -> Response:
        """Like ``jobs queue --json``: every unfinished job plus the ``limit`` newest
        finished ones; with ``status``, the ``limit`` newest jobs in those statuses."""
        records: list[JobRecord] = []
        if statuses is None or any(not s.is_terminal for s in statuses):
            for job_id in sorted(active_ids(self.paths)):
                record = read_job(self.paths, job_id)
                if record is None or record.status.is_terminal:
                    continue
                if statuses is None or record.status in statuses:
                    records.append(record)
            if statuses is not None:
                records = records[-limit:]
        if statuses is None or any(s.is_terminal for s in statuses):
            finished = 0
            for record in iter_jobs_desc(self.paths):
                if finished >= limit:
                    break
                if not record.status.is_terminal:
                    continue
                if statuses is None or record.status in statuses:
                    records.append(record)
                    finished += 1
        records.sort(key=lambda r: r.id)
        return json_response([job_view(r) for r in records])

    def job(self, job_id: int) -> Response:
        record = read_job(self.paths, job_id)
        if record is None:
            return error(404, f"no job {job_id}; list jobs with /api/jobs")
        return json_response(job_view(record))

    def log(self, job_id: int, tail: int) -> Response:
        from sky_mini.follow import read_tail

        if read_job(self.paths, job_id) is None:
            return error(404, f"no job {job_id}; list jobs with /api/jobs")
        lines, _ = read_tail(self.paths.job_log(job_id), tail)
        text = [line.decode("utf-8", "replace").rstrip("\n")[:MAX_LOG_LINE_CHARS] for line in lines]
        return json_response({"id": job_id, "tail": tail, "lines": text})

    def activity(self) -> Response:
        """Jobs finished (succeeded / failed) per 5 minutes over the last hour."""
        now = time.time()
        width = ACTIVITY_WINDOW_SECONDS / ACTIVITY_BUCKETS
        start = now - ACTIVITY_WINDOW_SECONDS
        succeeded = [0] * ACTIVITY_BUCKETS
        failed = [0] * ACTIVITY_BUCKETS
        for job in self.index.refresh():
            if job.finished_at is None or not start <= job.finished_at <= now:
                continue
            slot = min(ACTIVITY_BUCKETS - 1, int((job.finished_at - start) / width))
            if job.status is JobStatus.SUCCEEDED:
                succeeded[slot] += 1
            elif job.status.is_failed and job.status is not JobStatus.CANCELLED:
                failed[slot] += 1
        return json_response(
            {
                "start": start,
                "bucket_seconds": width,
                "succeeded": succeeded,
                "failed": failed,
            }
        )
