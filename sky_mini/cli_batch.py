"""``sky-mini jobs restart | clean | pause | resume``: the batch commands (added to ``jobs``)."""

from __future__ import annotations

import time

import click

from sky_mini.errors import UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("restart", context_settings=CONTEXT)
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def jobs_restart(job_id: str, as_json: bool) -> int:
    """Run job ID's task again as a new job (same env, name, queue, retries); print its ID."""
    from sky_mini import client
    from sky_mini.client_batch import restart

    paths = client.open_home()
    record = restart(paths, client.parse_job_id(job_id))
    client.ensure_server(paths)
    if as_json:
        from sky_mini.output import print_json

        print_json({"id": record.id, "restart_of": int(job_id), "name": record.name})
    else:
        click.echo(record.id)
    return 0


@click.command("clean", context_settings=CONTEXT)
@click.option("--older-than", metavar="DURATION", help="Only jobs finished this long ago (7d).")
def jobs_clean(older_than: str | None) -> int:
    """Remove finished jobs and their logs. Running and pending jobs are never touched."""
    from sky_mini import client
    from sky_mini.client_batch import clean
    from sky_mini.units import format_size, parse_duration

    age = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError:
            raise UsageError(
                f"--older-than {older_than!r}: give a duration such as 12h, 7d or 30d"
            ) from None
    result = clean(client.open_home(), age, time.time())
    which = "finished" if age is None else f"finished more than {older_than} ago"
    click.echo(
        f"Removed {len(result.removed)} {which} job(s), freed {format_size(result.freed_bytes)}"
        + (f"; kept {result.kept_unfinished} unfinished" if result.kept_unfinished else "")
        + "."
    )
    return 0


@click.command("pause", context_settings=CONTEXT)
@click.option("--queue", metavar="NAME", help="Pause only this queue (default: every job).")
def jobs_pause(queue: str | None) -> int:
    """Keep pending jobs PENDING (running ones continue). Survives a server restart."""
    return change_pause(queue, paused=True)


@click.command("resume", context_settings=CONTEXT)
@click.option("--queue", metavar="NAME", help="Resume only this queue (default: everything).")
def jobs_resume(queue: str | None) -> int:
    """Let paused pending jobs start again."""
    return change_pause(queue, paused=False)


def change_pause(queue: str | None, *, paused: bool) -> int:
    from sky_mini import client
    from sky_mini.client_batch import set_paused

    paths = client.open_home()
    paused_all, queues = set_paused(paths, queue, paused)
    what = f"queue {queue}" if queue else "all jobs"
    if paused:
        click.echo(f"Paused {what}: pending jobs stay PENDING; running ones continue.")
    else:
        still = ("; still paused: " + ", ".join(f"queue {q}" for q in queues)) if queues else ""
        click.echo(f"Resumed {what}{still}.")
        if paused_all:
            click.echo("Every job is still paused: resume with 'sky-mini jobs resume'.")
    client.wake_server(paths)  # no server: the next one reads the same file
    return 0


BATCH_COMMANDS = (jobs_restart, jobs_clean, jobs_pause, jobs_resume)
