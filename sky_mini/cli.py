"""The ``sky-mini`` command line. Commands are thin: parse, call ``client``, render.

Errors a user can cause arrive as :class:`~sky_mini.errors.SkyMiniError` and are printed once,
in :func:`main`, without a traceback. Keep imports here light: cron runs
``sky-mini jobs launch --async`` thousands of times a day.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, NoReturn

import click

from sky_mini import __version__
from sky_mini.errors import EXIT_DEGRADED, EXIT_ERROR, SkyMiniError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class LazyGroup(click.Group):
    """A group whose subcommands defined in other modules are imported only when named (or
    listed, for ``--help``): ``jobs launch --async`` never loads the services and batch
    commands. ``lazy`` maps a command name to ``"module:attribute"``."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            import importlib

            module, _, attribute = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


class JobIdType(click.ParamType[int, Any]):
    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from sky_mini.client import parse_job_id

        try:
            return parse_job_id(str(value))
        except UsageError as exc:
            self.fail(exc.message, param, ctx)


JOB_ID = JobIdType()


def parse_idle_minutes(value: str | None) -> float | None:
    if value is None:
        return None
    if value.lower() in ("off", "never", "false", "none"):
        return None
    try:
        minutes = float(value)
    except ValueError:
        raise UsageError(
            f"--idle-minutes {value!r}: give minutes (e.g. 10, 0.5) or 'off'"
        ) from None
    if minutes < 0:
        raise UsageError("--idle-minutes must not be negative")
    return minutes


@click.group(
    cls=LazyGroup,
    context_settings=CONTEXT,
    lazy={"services": "sky_mini.cli_services:services", "down": "sky_mini.cli_services:down"},
)
@click.version_option(__version__, prog_name="sky-mini")
def cli() -> None:
    """sky-mini: a small supervisor for jobs and services on one machine.

    \b
    Quick start:
      sky-mini jobs launch -- echo hello      run a job and stream its output
      sky-mini jobs launch --async task.yaml  queue a job and return its ID
      sky-mini jobs queue                     list jobs
      sky-mini api status                     the server and its executors
    """


# -- server ------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option("--foreground", is_flag=True, help="Run the server in this process (e.g. as PID 1).")
@click.option("--idle-minutes", metavar="MIN|off", help="Stop after this long with no work.")
@click.option("--executors", type=click.IntRange(min=1), help="Job executors (default: sized).")
@click.option("--detached", is_flag=True, hidden=True)
@click.option(
    "--http",
    "http_listen",
    metavar="ADDR:PORT",
    help="Serve /metrics, the JSON API and the dashboard here (e.g. 127.0.0.1:8765).",
)
def serve(
    foreground: bool,
    idle_minutes: str | None,
    executors: int | None,
    detached: bool,
    http_listen: str | None,
) -> int:
    """Run the supervisor: in this process with --foreground, else in the background.

    A --foreground server never idles out unless --idle-minutes is given. Logs go to stderr
    (and to $SKY_MINI_HOME/server.log).
    """
    from sky_mini.client import open_home

    if http_listen is not None:
        check_listen(http_listen)
    paths = open_home()
    if foreground:
        from sky_mini.config import load_settings
        from sky_mini.server.main import run_server

        settings = load_settings(paths).with_overrides(http_listen=http_listen)
        return run_server(
            paths,
            settings,
            idle_minutes=parse_idle_minutes(idle_minutes),
            executors=executors,
            detached=detached,
        )
    return start_background(paths, idle_minutes, executors, http_listen)


def check_listen(value: str) -> None:
    from sky_mini.config import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        raise UsageError(f"--http {exc}") from None


def start_background(
    paths: Any, idle_minutes: str | None, executors: int | None, http_listen: str | None = None
) -> int:
    from sky_mini.client import start_server

    pid, started = start_server(
        paths,
        idle_minutes=parse_idle_minutes(idle_minutes),
        executors=executors,
        http_listen=http_listen,
    )
    if started:
        click.echo(f"sky-mini server started: pid {pid}, log {paths.server_log}")
    else:
        click.echo(f"sky-mini server already running: pid {pid}, log {paths.server_log}")
    return 0


@cli.group(context_settings=CONTEXT)
def api() -> None:
    """Start, stop and inspect the server."""


@api.command("start", context_settings=CONTEXT)
@click.option("--idle-minutes", metavar="MIN|off", help="Stop after this long with no work.")
@click.option("--executors", type=click.IntRange(min=1), help="Job executors (default: sized).")
def api_start(idle_minutes: str | None, executors: int | None) -> int:
    """Start the server in the background; return once it is healthy."""
    from sky_mini.client import open_home

    return start_background(open_home(), idle_minutes, executors)


@api.command("stop", context_settings=CONTEXT)
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
def api_stop(timeout: float) -> int:
    """Stop the server gracefully (as SIGTERM): running jobs end KILLED/shutdown."""
    from sky_mini.client import open_home, stop_server

    paths = open_home()
    pid = stop_server(paths, timeout)
    if pid is None:
        click.echo(f"no sky-mini server is running for {paths.home}")
    else:
        click.echo(f"sky-mini server (pid {pid}) stopped")
    return 0


@api.command("status", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def api_status(as_json: bool) -> int:
    """Show the server, its resources and components. Exit 0 healthy, 3 none, 4 degraded."""
    from sky_mini.client import open_home, require_server
    from sky_mini.status import build_report

    paths = open_home()
    report = build_report(require_server(paths), time.time())
    if as_json:
        from sky_mini.output import print_json

        print_json(report)
    else:
        from sky_mini.output import status_text

        click.echo(status_text(report))
    return 0 if report["health"] == "healthy" else EXIT_DEGRADED


@api.command("logs", context_settings=CONTEXT)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=click.IntRange(min=0), default=100, show_default=True)
def api_logs(follow: bool, tail: int) -> int:
    """Print the server log ($SKY_MINI_HOME/server.log)."""
    from sky_mini.client import copy_available, open_home, server_running, tail_lines

    paths = open_home()
    out = sys.stdout.buffer
    for line in tail_lines(paths.server_log, tail):
        out.write(line)
    out.flush()
    if not follow:
        return 0
    try:
        with open(paths.server_log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            while True:
                if not copy_available(handle, out):
                    if not server_running(paths):
                        copy_available(handle, out)
                        return 0
                    time.sleep(0.2)
    except FileNotFoundError:
        raise SkyMiniError(f"no server log at {paths.server_log} yet") from None


# -- jobs --------------------------------------------------------------------------------


@cli.group(
    cls=LazyGroup,
    context_settings=CONTEXT,
    lazy={
        name: f"sky_mini.cli_batch:jobs_{name}" for name in ("restart", "clean", "pause", "resume")
    },
)
def jobs() -> None:
    """Submit, list, follow, cancel and wait for jobs."""


@jobs.command("launch", context_settings=CONTEXT)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="TASK.yaml | -- CMD [ARGS]...")
@click.option("--name", help="Job name (default: the task's name or the command).")
@click.option("--env", "envs", multiple=True, metavar="K=V", help="Set an env var (repeatable).")
@click.option("--cpus", help="CPUs reserved while it runs (default 1).")
@click.option("--memory", help="Hard memory limit, e.g. 512M.")
@click.option("--timeout", help="Wall-clock limit, e.g. 30m.")
@click.option("--infra", help="Where to run: local, slurm or slurm/PARTITION (overrides file).")
@click.option("--secret", "secrets", multiple=True, metavar="K[=V]", help="Give a secret.")
@click.option("--after", "after", multiple=True, metavar="ID[,ID]", help="Run after these.")
@click.option("--dry-run", is_flag=True, help="Check and print the plan; record nothing.")
@click.option("--async", "detach", is_flag=True, help="Return once recorded; print the ID.")
@click.option("--json", "as_json", is_flag=True, help="With --async: print a JSON object.")
@click.option("--retries", type=int, metavar="N", help="Run a failed job again, up to N times.")
@click.option("--unique", is_flag=True, help="If a job of this name is unfinished, reuse it.")
@click.option("--queue", metavar="NAME", help="Run in this queue (config 'queues').")
@click.option("--at", "at", metavar="TIME", help="Start at HH:MM or an ISO time (local).")
@click.option("--in", "in_", metavar="DURATION", help="Start after this long, e.g. 10m.")
def jobs_launch(
    args: tuple[str, ...],
    name: str | None,
    envs: tuple[str, ...],
    cpus: str | None,
    memory: str | None,
    timeout: str | None,
    infra: str | None,
    secrets: tuple[str, ...],
    after: tuple[str, ...],
    dry_run: bool,
    detach: bool,
    as_json: bool,
    retries: int | None,
    unique: bool,
    queue: str | None,
    at: str | None,
    in_: str | None,
) -> int:
    """Run a task file or a command as a job.

    \b
    Attached (default): stream the output and exit with the job's exit code; Ctrl-C
    detaches and leaves the job running. --async: print the job ID and return at once.
    \b
    Examples:
      sky-mini jobs launch -- sh -c 'echo hi; exit 3'
      sky-mini jobs launch --async --memory 512M --timeout 30m nightly.yaml
      sky-mini jobs launch --async --unique --retries 2 --queue nightly etl.yaml
      sky-mini jobs launch --async --at 03:00 -- ./backup.sh
    """
    from sky_mini.taskplan import build_plan

    if as_json and not detach:
        raise UsageError("--json goes with --async (attached jobs stream their output)")
    after_ids = parse_after(after)
    scheduled_at = None
    if at is not None or in_ is not None:
        from sky_mini.schedule import start_time  # lazily: datetime costs ~3 ms

        scheduled_at = start_time(at, in_, time.time())
    plan = build_plan(
        args,
        name=name,
        envs=envs,
        secrets=secrets,
        cpus=cpus,
        memory=memory,
        timeout=timeout,
        infra=infra,
        retries=retries,
        create_home=not dry_run,
    )
    if dry_run:
        from sky_mini.taskplan import note_ignored, render_plan

        note_ignored(plan)
        click.echo(render_plan(plan))
        return 0
    from sky_mini.client_batch import BatchOptions
    from sky_mini.jobs import launch

    options = BatchOptions(unique=unique, queue=queue, scheduled_at=scheduled_at)
    return launch(plan, after=after_ids, detach=detach, as_json=as_json, options=options)


def parse_after(values: tuple[str, ...]) -> list[int]:
    """``--after 3 --after 4,5`` -> [3, 4, 5] (each a valid job ID)."""
    from sky_mini.client import parse_job_id

    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            try:
                job_id = parse_job_id(part.strip())
            except UsageError as exc:
                raise UsageError(f"--after {value!r}: {exc.message}") from None
            if job_id not in ids:
                ids.append(job_id)
    return ids


@jobs.command("queue", context_settings=CONTEXT)
@click.option("--all", "show_all", is_flag=True, help="Every job, newest first (see --limit).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON records.")
@click.option("--limit", type=click.IntRange(min=1), help="How many finished jobs to show.")
@click.option("--queue", metavar="NAME", help="Only the jobs of this queue.")
def jobs_queue(show_all: bool, as_json: bool, limit: int | None, queue: str | None) -> int:
    """List unfinished jobs and the most recent finished ones."""
    from sky_mini.client import list_jobs, open_home

    records = list_jobs(open_home(), show_all=show_all, limit=limit)
    if queue is not None:
        records = [r for r in records if r.queue == queue]
    if as_json:
        from sky_mini.output import print_json

        print_json([r.public_json() for r in records])
    else:
        from sky_mini.output import jobs_table

        click.echo(jobs_table(records))
    return 0


@jobs.command("logs", context_settings=CONTEXT)
@click.argument("job_id", type=JOB_ID)
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Keep following until the job ends, then exit with its code.",
)
@click.option("--tail", type=click.IntRange(min=0), help="Start from the last N lines.")
def jobs_logs(job_id: int, follow: bool, tail: int | None) -> int:
    """Print a job's output (reads the log file; works while the server is down)."""
    from sky_mini.client import exit_code_of, follow_job, open_home

    paths = open_home()
    try:
        record = follow_job(paths, job_id, sys.stdout.buffer, follow=follow, tail=tail)
    except KeyboardInterrupt:
        return 130
    if follow and record.status.is_terminal:
        return exit_code_of(record)
    return 0


@jobs.command("cancel", context_settings=CONTEXT)
@click.argument("job_ids", nargs=-1, type=JOB_ID)
@click.option("--all", "cancel_all", is_flag=True, help="Cancel every unfinished job.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation with --all.")
@click.option("--no-wait", is_flag=True, help="Return once the request is recorded.")
def jobs_cancel(job_ids: tuple[int, ...], cancel_all: bool, yes: bool, no_wait: bool) -> int:
    """Cancel jobs: PENDING ones never start; RUNNING ones get SIGTERM, then SIGKILL."""
    from sky_mini.jobs import cancel_jobs

    return cancel_jobs(list(job_ids), cancel_all=cancel_all, yes=yes, wait=not no_wait)


@jobs.command("wait", context_settings=CONTEXT)
@click.argument("job_ids", nargs=-1, required=True, type=JOB_ID)
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after S seconds (exit 1).")
def jobs_wait(job_ids: tuple[int, ...], timeout: float | None) -> int:
    """Block until the jobs finish; exit with the first non-zero job exit code, else 0."""
    from sky_mini.jobs import wait_jobs

    return wait_jobs(list(job_ids), timeout)


def main() -> None:
    """Console entry point: run the CLI, print user errors once, exit with a named code."""
    code = run(sys.argv[1:])
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """Exit with ``code``, skipping the interpreter's teardown when nothing needs it.

    Tearing down every imported module costs more than a third of a ``launch --async`` on
    this machine (cron pays it thousands of times a day). Everything the command wrote is
    closed (state files are fsynced before the ID prints), so only the standard streams
    still hold data: they are flushed here. When an ``atexit`` callback is registered
    (logging, coverage), a profiler or tracer is attached (``python -m cProfile`` writes
    its file after ``main`` returns), or a non-daemon thread still runs, the ordinary exit
    runs them.
    """
    import atexit
    import threading

    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` went away; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = code or EXIT_ERROR
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if atexit._ncallbacks() == 0 and not watched and all(t.daemon for t in others):
        os._exit(code)
    sys.exit(code)


def run(argv: list[str]) -> int:
    try:
        result = cli.main(args=argv, prog_name="sky-mini", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SkyMiniError as exc:
        click.echo(f"sky-mini: error: {exc.message}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout went away (e.g. `| head`); nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(f"sky-mini: error: {exc.strerror or exc}{where}", err=True)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
        if os.environ.get("SKY_MINI_DEBUG"):
            raise
        click.echo(
            f"sky-mini: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug; rerun with SKY_MINI_DEBUG=1 for the traceback and report it.",
            err=True,
        )
        return EXIT_ERROR
    return result if isinstance(result, int) else 0
