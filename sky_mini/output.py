"""Rendering of command results as tables or JSON (commands return data; this prints it)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from sky_mini.models import JobRecord
from sky_mini.units import format_duration, format_size

REASON_WIDTH = 60


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))
        lines.append(line.rstrip())
    return "\n".join(lines)


def clock_time(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "-"
    local = time.localtime(timestamp)
    if now - timestamp < 20 * 3600:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%Y-%m-%d %H:%M", local)


def shorten(text: str | None, width: int = REASON_WIDTH) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def group_pipelines(records: Sequence[JobRecord]) -> list[tuple[str | None, JobRecord]]:
    """Keep the order, but gather each pipeline's jobs under its first one; the first
    element says which pipeline starts at that row (None: no new header)."""
    out: list[tuple[str | None, JobRecord]] = []
    done: set[int] = set()
    for index, record in enumerate(records):
        if record.id in done:
            continue
        if record.pipeline is None:
            out.append((None, record))
            continue
        members = [
            r
            for r in records[index:]
            if r.pipeline == record.pipeline and r.id not in done and abs(r.id - record.id) <= 1000
        ]
        members.sort(key=lambda r: r.id)
        for position, member in enumerate(members):
            out.append((record.pipeline if position == 0 else None, member))
            done.add(member.id)
    return out


def jobs_table(records: Sequence[JobRecord], *, now: float | None = None) -> str:
    """The ``jobs queue`` table: one row per job, a pipeline's jobs grouped under a
    ``[name]`` row; ATTEMPT, QUEUE and AFTER appear only when a job uses them."""
    now = time.time() if now is None else now
    if not records:
        return "No jobs. Submit one with: sky-mini jobs launch -- echo hello"
    headers = ["ID", "NAME", "STATUS", "SUBMITTED", "STARTED", "DURATION", "EXIT", "PEAK_MEM"]
    # Optional columns appear only when a job uses them (INFRA: a job not run here).
    optional: tuple[tuple[str, Callable[[JobRecord], bool], Callable[[JobRecord], Any]], ...] = (
        ("INFRA", lambda r: r.infra != "local", infra_cell),
        ("ATTEMPT", lambda r: r.max_retries() > 0, attempt_cell),
        ("QUEUE", lambda r: r.queue is not None, lambda r: r.queue),
        ("AFTER", lambda r: bool(r.after), lambda r: ",".join(map(str, r.after)) or None),
    )
    used = [(h, cell) for h, wanted, cell in optional if any(wanted(r) for r in records)]
    headers += [h for h, _ in used] + ["REASON"]
    rows: list[list[Any]] = []
    for header, r in group_pipelines(records):
        if header is not None:
            rows.append(["", shorten(f"[{header}]", 24)] + [""] * (len(headers) - 2))
        rows.append(
            [
                r.id,
                shorten(("  " if r.pipeline else "") + r.name, 24),
                r.status.value,
                clock_time(r.submitted_at, now),
                clock_time(r.started_at, now),
                format_duration(r.duration(now)),
                r.exit_code,
                format_size(r.peak_memory_bytes) if r.peak_memory_bytes else "-",
                *(cell(r) for _, cell in used),
                shorten(r.reason),
            ]
        )
    return table(headers, rows)


def attempt_cell(record: JobRecord) -> str | None:
    """``2/3``: the attempt running (or last run) of how many a retried job may get."""
    retries = record.max_retries()
    return f"{record.attempt}/{retries + 1}" if retries else None


def infra_cell(record: JobRecord) -> str:
    """``local``, or ``slurm:1234`` (the Slurm job ID once it has one)."""
    if record.infra == "local":
        return "local"
    return f"{record.infra}:{record.slurm_job_id}" if record.slurm_job_id else record.infra


def slurm_lines(component: dict[str, Any]) -> list[str]:
    info = component.get("slurm") or {}
    if not info.get("reachable"):
        return [f"slurm       controller unreachable: {info.get('error') or 'not probed yet'}"]
    nodes = ", ".join(f"{n} {state}" for state, n in sorted((info.get("nodes") or {}).items()))
    return [
        f"slurm       controller reachable, {info.get('version')}, partitions "
        f"{', '.join(info.get('partitions') or []) or '-'}, nodes {nodes or '-'}; "
        f"{component.get('jobs', 0)} job(s) tracked, polled every "
        f"{component.get('poll_interval_seconds')}s",
        f"            {component.get('note')}",
    ]


def status_text(report: dict[str, Any]) -> str:
    """Human view of ``api status``."""
    res = report.get("resources", {})
    pool = report.get("pool", {})
    lines = [
        f"server      pid {report['pid']}, up {format_duration(report.get('uptime_seconds'))}, "
        f"version {report.get('version')}, health {report['health']}",
        f"home        {report.get('home')}",
        f"cpus        {res.get('cpus')} from {res.get('cpus_source')} ({res.get('cpus_detail')})",
        f"memory      {format_size(res.get('memory_bytes'))} from {res.get('memory_source')} "
        f"({res.get('memory_detail')})",
        f"executors   {pool.get('explanation')}",
        f"memory cap  per-job limits via {report.get('memory_mechanism')}",
        f"queue       {report.get('queue', {}).get('pending', 0)} pending, "
        f"{report.get('queue', {}).get('running', 0)} running",
    ]
    if report.get("autostop_in_seconds") is not None:
        lines.append(f"autostop    in {format_duration(report['autostop_in_seconds'])} if idle")
    for warning in report.get("warnings") or []:
        lines.append(f"warning     {warning}")
    lines.append("")
    rows = [
        (
            c["name"],
            c["kind"],
            c.get("pid"),
            c["state"],
            c.get("job_id"),
            format_size(c.get("rss_bytes")) if c.get("rss_bytes") else "-",
            format_duration(c.get("uptime_seconds")),
            c.get("restarts", 0),
        )
        for c in report.get("components", [])
    ]
    lines.append(
        table(("COMPONENT", "KIND", "PID", "STATE", "JOB", "RSS", "UPTIME", "RESTARTS"), rows)
    )
    for c in report.get("components", []):
        if c.get("kind") == "http":
            lines.append(
                f"http: {c['url']} (/metrics, /api, dashboard)"
                if c.get("url")
                else f"http: not listening on {c.get('listen')}: {c.get('error') or c['state']}"
            )
        if c.get("kind") == "slurm-controller":
            lines.extend(slurm_lines(c))
        if c.get("autostop_in_seconds") is not None:
            lines.append(
                f"{c['name']}: no service up, autostop in "
                f"{format_duration(c['autostop_in_seconds'])}"
            )
    return "\n".join(lines)
