"""The job commands' logic: build a task from the CLI, launch, cancel, wait."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from sky_mini import client
from sky_mini.client_batch import BatchOptions, submit
from sky_mini.errors import SkyMiniError, UsageError
from sky_mini.models import JobRecord, JobStatus

YAML_SUFFIXES = (".yaml", ".yml")


def build_task(
    args: Sequence[str],
    *,
    name: str | None,
    envs: Sequence[str],
    cpus: str | None,
    memory: str | None,
    timeout: str | None,
    retries: int | None = None,
) -> tuple[Any, str]:
    """The validated TaskSpec and where it came from (a file path or "command line")."""
    from sky_mini import spec

    if not args:
        raise UsageError(
            "nothing to run: give a task file (sky-mini jobs launch task.yaml) or a command "
            "after -- (sky-mini jobs launch -- echo hello)"
        )
    is_file = len(args) == 1 and args[0].endswith(YAML_SUFFIXES) and "--" not in sys.argv[1:]
    if is_file:
        source = args[0]
        task = spec.load_task(source)
    else:
        source = "command line"
        task = spec.task_from_command(list(args), name=name, cwd=os.getcwd())
    task = spec.apply_overrides(
        task,
        name=name,
        envs=spec.parse_env_assignments(list(envs)),
        cpus=cpus,
        memory=memory,
        timeout=timeout,
        retries=retries,
        source=source,
    )
    check_fits_machine(task, source)
    return task, source


def check_fits_machine(task: Any, source: str) -> None:
    """Reject at submit what this machine can never give (exit 2, nothing recorded)."""
    from sky_mini import spec
    from sky_mini.capacity import read_published

    paths = client.open_home()
    # The running server's detection, when it is what ours would be (sky_mini.capacity).
    published = read_published(paths.server_dir, paths.config)
    if published is not None:
        cpus, memory = published
    else:
        cpus, memory = detect_machine(paths)
    usable = max(memory - SERVER_RESERVE_MEMORY_BYTES, memory // 2)
    spec.check_fits(task.resources, machine_cpus=cpus, machine_memory_bytes=usable, path=source)


SERVER_RESERVE_MEMORY_BYTES = 256 * 1024**2
"""As sky_mini.resources' (kept here so the submit path need not import that module)."""


def detect_machine(paths: Any) -> tuple[float, int]:
    """(cpus, memory_bytes) this process may use: config, overrides, cgroups, host."""
    from sky_mini.config import load_settings
    from sky_mini.resources import detect_resources

    settings = load_settings(paths)
    detected = detect_resources(
        config_cpus=settings.cpus,
        config_memory_bytes=settings.memory_bytes,
        host_memory=read_meminfo_total,
    )
    return detected.cpus, detected.memory_bytes


def read_meminfo_total() -> int:
    """MemTotal without importing psutil (this runs on the cron-facing submit path)."""
    with open("/proc/meminfo", "rb") as handle:
        for line in handle:
            if line.startswith(b"MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def launch(
    task: Any, source: str, *, detach: bool, as_json: bool, options: BatchOptions | None = None
) -> int:
    paths = client.open_home()
    name = task.name or default_name(task.run)
    record, deduplicated = submit(paths, task.to_json(), name, options or BatchOptions())
    if deduplicated:
        click.echo(
            f"sky-mini: job {record.id} named {name!r} is still {record.status.value}; "
            "nothing new was recorded (--unique)",
            err=True,
        )
    else:
        client.ensure_server(paths)
    if detach or deduplicated:
        if as_json:
            from sky_mini.output import print_json

            print_json(
                {
                    "id": record.id,
                    "name": record.name,
                    "status": record.status.value,
                    "log_path": record.log_path,
                    "deduplicated": deduplicated,
                }
            )
        else:
            click.echo(record.id)
        return 0
    click.echo(
        f"Job {record.id} submitted; streaming its output (Ctrl-C detaches, the job keeps "
        "running).",
        err=True,
    )
    try:
        final = client.follow_job(
            paths, record.id, sys.stdout.buffer, follow=True, keep_server=True
        )
    except KeyboardInterrupt:
        click.echo(
            f"\nDetached from job {record.id}; it keeps running. Reattach with: "
            f"sky-mini jobs logs {record.id}",
            err=True,
        )
        return 130
    report_end(final)
    return client.exit_code_of(final)


def default_name(run: str) -> str:
    first = run.strip().splitlines()[0] if run.strip() else "job"
    return first[:40]


def report_end(record: JobRecord) -> None:
    if record.status is JobStatus.SUCCEEDED:
        click.echo(f"Job {record.id} SUCCEEDED.", err=True)
        return
    code = f" (reason_code {record.reason_code})" if record.reason_code else ""
    click.echo(f"Job {record.id} {record.status.value}{code}: {record.reason}", err=True)


def cancel_jobs(job_ids: list[int], *, cancel_all: bool, yes: bool, wait: bool) -> int:
    paths = client.open_home()
    if cancel_all:
        if job_ids:
            raise UsageError("give job IDs or --all, not both")
        records = [
            r
            for r in client.list_jobs(paths, show_all=False, limit=None)
            if not r.status.is_terminal
        ]
        if not records:
            click.echo("No unfinished jobs.")
            return 0
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError("--all cancels every unfinished job; add -y to confirm")
            click.confirm(f"Cancel {len(records)} unfinished job(s)?", abort=True)
        job_ids = [r.id for r in records]
    if not job_ids:
        raise UsageError("give at least one job ID, or --all")
    requested: list[int] = []
    for job_id in job_ids:
        record = client.request_cancel(paths, job_id)
        if record.status.is_terminal:
            click.echo(f"Job {job_id} already finished ({record.status.value}); nothing to do.")
        else:
            requested.append(job_id)
    if not requested:
        return 0
    client.ensure_server(paths)
    if not wait:
        click.echo(f"Cancellation requested for job(s) {', '.join(map(str, requested))}.")
        return 0
    for record in client.wait_for_jobs(paths, requested, timeout=None):
        click.echo(
            f"Job {record.id} {record.status.value}"
            + (f": {record.reason}" if record.reason else "")
        )
    return 0


def wait_jobs(job_ids: list[int], timeout: float | None) -> int:
    paths = client.open_home()
    records = [client.load_job(paths, j) for j in job_ids]
    if any(not r.status.is_terminal for r in records):
        client.ensure_server(paths)
    try:
        finished = client.wait_for_jobs(paths, job_ids, timeout)
    except SkyMiniError:
        raise
    for record in finished:
        if record.status is not JobStatus.SUCCEEDED:
            return client.exit_code_of(record)
    return 0
