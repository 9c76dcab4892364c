"""The job commands' logic: build a task from the CLI, launch, cancel, wait."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from sky_mini import client
from sky_mini.client_batch import BatchOptions, submit
from sky_mini.errors import SkyMiniError, UsageError
from sky_mini.models import JobRecord, JobStatus


def launch(
    plan: Any,
    *,
    after: Sequence[int] = (),
    detach: bool,
    as_json: bool,
    options: BatchOptions | None = None,
) -> int:
    """Record every task of ``plan`` (a pipeline: each after the previous one), wake the
    server, then print the IDs (``--async``) or stream the jobs in order. With ``--unique``
    an unfinished job of the same name is reused (nothing recorded for it)."""
    from sky_mini.taskplan import default_name as task_default_name
    from sky_mini.taskplan import note_ignored

    paths = client.open_home()
    note_ignored(plan)
    client.check_jobs_exist(paths, after, "--after")
    records: list[JobRecord] = []
    reused: set[int] = set()
    previous = list(after)
    for task, infra in zip(plan.tasks, plan.infras, strict=True):
        task_json, secrets = task.to_json(), task.secrets
        if secrets and secrets_in_record():
            task_json["envs"] = {**task_json["envs"], **secrets}  # test-only negative control
        record, deduplicated = submit(
            paths,
            task_json,
            task.name or task_default_name(task),
            options or BatchOptions(),
            fields={"after": previous, "pipeline": plan.pipeline, "infra": infra},
            secrets=secrets,
        )
        if deduplicated:
            reused.add(record.id)
            click.echo(
                f"sky-mini: job {record.id} named {record.name!r} is still "
                f"{record.status.value}; nothing new was recorded (--unique)",
                err=True,
            )
        records.append(record)
        if not plan.parallel:
            previous = [record.id]
    if len(reused) < len(records):
        client.ensure_server(paths)
    if detach or len(reused) == len(records):  # --unique reused them all: nothing to stream
        if as_json:
            from sky_mini.output import print_json

            rows = [
                {
                    "id": r.id,
                    "name": r.name,
                    "status": r.status.value,
                    "log_path": r.log_path,
                    "after": r.after,
                    "pipeline": r.pipeline,
                    "deduplicated": r.id in reused,
                }
                for r in records
            ]
            print_json(rows[0] if len(rows) == 1 and plan.pipeline is None else rows)
        else:
            for r in records:
                click.echo(r.id)
        return 0
    ids = ", ".join(str(r.id) for r in records)
    click.echo(
        f"Job{'s' if len(records) > 1 else ''} {ids} submitted; streaming the output "
        "(Ctrl-C detaches, the jobs keep running).",
        err=True,
    )
    code = 0
    for record in records:
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
        if code == 0 and final.status is not JobStatus.SUCCEEDED:
            code = client.exit_code_of(final)
    return code


def secrets_in_record() -> bool:
    """Test only (``SKY_MINI_DISABLE=secretfile``): put secret values into the record, as
    a naive implementation would, to prove the secrecy tests can fail."""
    from sky_mini.follow import is_disabled

    return is_disabled("secretfile")


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
