"""``sky-mini services up/down/status/logs`` and ``sky-mini down services-controller``.

Commands are thin: validate, record the desired state or an intent (``sky_mini.services``),
wake the server (``sky_mini.client``), and render what comes back. The server and its
services-controller do the rest; ``status`` and ``logs`` only read files.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from sky_mini.errors import SkyMiniError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
STOP_WAIT_EXTRA_SECONDS = 15.0
FOLLOW_POLL_SECONDS = 0.2


@click.group(context_settings=CONTEXT)
def services() -> None:
    """Run long-lived services: replicas, restarts and a load balancer on 127.0.0.1.

    \b
    Examples:
      sky-mini services up web.yaml      start (or update) the service in web.yaml
      sky-mini services status           services, replicas and the controller
      sky-mini services logs web -f      follow replica 1's output
      sky-mini services down web         stop its replicas and load balancer now
    """


@services.command("up", context_settings=CONTEXT)
@click.argument("file", metavar="SERVICE.yaml")
def services_up(file: str) -> int:
    """Start a service, or update it to the file's spec (a new generation).

    The desired state is recorded, so the service comes back after a server restart.
    A bad file exits 2 and records nothing.
    """
    from sky_mini import client, spec
    from sky_mini import services as svc
    from sky_mini.taskplan import check_fits_machine

    paths = client.open_home()
    service = spec.load_service(file)
    svc.validate_for_service(service, file)
    check_fits_machine(service, file)
    record = svc.record_up(paths, service, file)
    client.ensure_server(paths)
    where = (
        f"load balancer {svc.LB_HOST}:{service.port}"
        if service.port
        else "load balancer port chosen at start (see 'sky-mini services status')"
    )
    click.echo(
        f"Service {record.name} is up (generation {record.generation}): "
        f"{service.replicas} replica(s), {where}.\n"
        f"Watch it with: sky-mini services status"
    )
    return 0


@services.command("down", context_settings=CONTEXT)
@click.argument("names", nargs=-1, metavar="NAME...")
@click.option("--all", "every", is_flag=True, help="Take every service down.")
@click.option("--no-wait", is_flag=True, help="Return once the request is recorded.")
def services_down(names: tuple[str, ...], every: bool, no_wait: bool) -> int:
    """Stop services: their load balancers close and replicas get SIGTERM now (SIGKILL after
    the grace period). The services-controller stays warm for
    services.controller.idle_minutes, then stops itself."""
    from sky_mini import client
    from sky_mini import services as svc
    from sky_mini.config import load_settings

    if not names and not every:
        raise UsageError("say which services to take down: NAME... or --all")
    if names and every:
        raise UsageError("give service names or --all, not both")
    paths = client.open_home()
    changes = svc.record_down(paths, names, every=every)
    if not changes:
        click.echo("No services.")
        return 0
    client.wake_server(paths)
    settings = load_settings(paths)
    stopping = [name for name, was_up in changes if was_up]
    left: list[str] = []
    if stopping and not no_wait:
        left = svc.wait_for_services_stopped(
            paths, stopping, settings.kill_grace_seconds + STOP_WAIT_EXTRA_SECONDS
        )
    for name, was_up in changes:
        if not was_up:
            click.echo(f"Service {name} was already down.")
        elif no_wait:
            click.echo(f"Service {name}: going down.")
        elif name in left:
            click.echo(f"Service {name}: still stopping; see 'sky-mini services status'.")
        else:
            click.echo(f"Service {name} is down: replicas stopped, load balancer closed.")
    if stopping and not svc.up_services(paths.services_dir):
        minutes = settings.controller_idle_minutes
        if minutes is None:
            note = "it never stops by itself (services.controller.idle_minutes: false)"
        else:
            from sky_mini.units import format_duration

            note = f"it stops by itself after {format_duration(minutes * 60)} with no service up"
        click.echo(
            f"The services-controller stays warm for the next 'up'; {note}. "
            "Stop it now with: sky-mini down services-controller"
        )
    return 1 if left else 0


@services.command("status", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def services_status(as_json: bool) -> int:
    """Show services, their replicas and the services-controller (with its autostop)."""
    from sky_mini import client
    from sky_mini import services as svc

    paths = client.open_home()
    data = svc.build_status(paths, client.read_status(paths), time.time())
    if as_json:
        from sky_mini.output import print_json

        print_json(data)
    else:
        click.echo(render_status(data))
    return 0


@services.command("logs", context_settings=CONTEXT)
@click.argument("name")
@click.option("--replica", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--setup", is_flag=True, help="Show the setup command's output instead.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output (Ctrl-C stops).")
@click.option("--tail", type=click.IntRange(min=0), help="Start from the last N lines.")
def services_logs(name: str, replica: int, setup: bool, follow: bool, tail: int | None) -> int:
    """Print a replica's output (reads the log file; works while the server is down)."""
    import os

    from sky_mini import client
    from sky_mini import services as svc

    paths = client.open_home()
    desired = svc.read_desired(paths.services_dir, name)
    if desired is None:
        known = ", ".join(sorted(svc.read_all_desired(paths.services_dir))) or "none"
        raise SkyMiniError(f"no service named {name!r} (known services: {known})")
    replicas = int(desired.spec.get("replicas") or 1)
    if setup:
        path = svc.setup_log_path(paths.services_dir, name)
    else:
        if replica > replicas:
            raise UsageError(
                f"service {name} has {replicas} replica(s); use --replica 1..{replicas}"
            )
        path = svc.replica_log_path(paths.services_dir, name, replica)
    if not os.path.exists(path):
        what = "setup" if setup else f"replica {replica}"
        raise SkyMiniError(f"no output from {what} of service {name} yet ({path})")
    out = sys.stdout.buffer
    try:
        with open(path, "rb") as handle:
            if tail is not None:
                for line in client.tail_lines(path, tail):
                    out.write(line)
                handle.seek(0, os.SEEK_END)
            client.copy_available(handle, out)
            out.flush()
            while follow:
                if not client.copy_available(handle, out):
                    time.sleep(FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        return 0
    return 0


@click.command("down", context_settings=CONTEXT)
@click.argument("name", metavar="services-controller", type=click.Choice(["services-controller"]))
@click.option("--force", is_flag=True, help="Also take every service that is up down.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
def down(name: str, force: bool, timeout: float) -> int:
    """Stop the services-controller now (refused while a service is up, unless --force)."""
    from sky_mini import client
    from sky_mini import services as svc

    paths = client.open_home()
    up = svc.up_services(paths.services_dir)
    if up and not force:
        listed = ", ".join(up)
        raise SkyMiniError(
            f"refusing to stop the services-controller: service(s) {listed} are up. "
            f"Take them down first ('sky-mini services down {' '.join(up)}'), "
            "or add --force to stop them too"
        )
    if up:
        svc.record_down(paths, up, every=False)
        click.echo(f"Took down service(s): {', '.join(up)}")
    facts = svc.read_controller_facts(paths.services_dir)
    if not svc.controller_alive(facts):
        click.echo(f"The {name} is not running.")
        return 0
    pid = (facts or {}).get("pid")
    svc.write_controller_intent(paths, force=force)
    if not client.wake_server(paths):
        raise SkyMiniError(
            f"the {name} runs (pid {pid}) but the server does not answer; see 'sky-mini api status'"
        )
    if not svc.wait_for_controller_stopped(paths, timeout):
        raise SkyMiniError(
            f"the {name} (pid {pid}) did not stop within {timeout:g}s; see 'sky-mini api logs'"
        )
    click.echo(f"The {name} (pid {pid}) stopped.")
    return 0


# -- rendering ------------------------------------------------------------------------------


def render_status(data: dict[str, Any]) -> str:
    from sky_mini.output import shorten, table

    rows = data.get("services") or []
    lines: list[str] = []
    if rows:
        lines.append(
            table(
                ("NAME", "STATUS", "REPLICAS", "ENDPOINT", "REASON"),
                [
                    (
                        r["name"],
                        r["status"],
                        f"{r['ready_replicas']}/{r['total_replicas']}",
                        r.get("endpoint"),
                        shorten(r.get("reason"), 70),
                    )
                    for r in rows
                ],
            )
        )
        replica_rows = [
            (
                f"{r['name']}/{rep.get('index')}",
                rep.get("state"),
                rep.get("pid"),
                rep.get("port"),
                rep.get("restarts", 0),
                shorten(rep.get("last_exit_reason"), 60),
            )
            for r in rows
            for rep in r.get("replicas") or []
        ]
        if replica_rows:
            lines.append("")
            lines.append(
                table(("REPLICA", "STATE", "PID", "PORT", "RESTARTS", "LAST EXIT"), replica_rows)
            )
    else:
        lines.append("No services. Start one with: sky-mini services up SERVICE.yaml")
    lines.append("")
    lines.append(controller_line(data.get("controller") or {}))
    return "\n".join(lines)


def controller_line(info: dict[str, Any]) -> str:
    from sky_mini.units import format_duration

    restarts = info.get("restarts") or 0
    restarted = f", restarted {restarts} time(s)" if restarts else ""
    if not info.get("running"):
        if not info.get("server_running"):
            return "services-controller: not running (no sky-mini server is running)"
        if info.get("component_state") in ("backoff", "dead"):
            return f"services-controller: not running, the server restarts it{restarted}"
        return "services-controller: not running (it starts with the next 'services up')"
    line = (
        f"services-controller: pid {info.get('pid')}, "
        f"up {format_duration(info.get('uptime_seconds'))}{restarted}"
    )
    if info.get("autostop_in_seconds") is not None:
        line += f"; no service up, autostop in {format_duration(info['autostop_in_seconds'])}"
    elif info.get("state") == "idle":
        line += "; no service up, autostop disabled (services.controller.idle_minutes: false)"
    elif info.get("state") == "stopping":
        line += "; stopping"
    return line
