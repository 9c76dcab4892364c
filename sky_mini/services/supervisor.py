"""The server's side of services: owns the services-controller process.

``ServicesSupervisor.reconcile(now)`` runs once per server tick. It notices changes to the
desired state (a stat of each ``services/*.json``), forks the controller when a service is
desired up and none runs, forwards ``reload`` when the desired state changes, handles the
``down services-controller`` intent, and restarts a controller that died unexpectedly while
services are up (with a backoff when it keeps dying). A controller that exited by itself
(idle autostop) is not restarted until the next ``services up``.

The controller is forked from the server's main thread and tied to it like a job executor:
``PR_SET_PDEATHSIG(SIGTERM)`` plus a command pipe whose EOF means "server gone".
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sky_mini import procs
from sky_mini.config import Settings
from sky_mini.paths import Paths
from sky_mini.server.channel import LineReader, send_message
from sky_mini.services import (
    CONTROLLER_NAME,
    DesiredService,
    desired_signature,
    read_all_desired,
    take_controller_intent,
)
from sky_mini.services.model import ControllerConfig, backoff_initial_from_env

log = logging.getLogger("sky_mini.server")

CRASH_WINDOW_SECONDS = 300.0
CRASH_BACKOFF_MAX_SECONDS = 60.0
SHUTDOWN_EXTRA_SECONDS = 5.0
"""After the kill grace, how long a stopping controller gets before it is SIGKILLed."""

Spawner = Callable[[ControllerConfig], tuple[int, int, int]]
"""Starts a controller: returns (pid, command pipe write end, event pipe read end)."""


def spawn_controller(config: ControllerConfig) -> tuple[int, int, int]:
    """Fork the services-controller from this (main) thread; see controller.controller_main."""
    from sky_mini.server.tied import fork_tied
    from sky_mini.services.controller import controller_main

    return fork_tied(
        "services-controller",
        config.disabled,
        lambda cmd_fd, evt_fd: controller_main(config, cmd_fd, evt_fd),
    )


def crash_delay(crashes_in_window: int) -> float:
    """Seconds to wait before restarting a controller that crashed this many times lately."""
    if crashes_in_window <= 1:
        return 0.0
    return float(min(CRASH_BACKOFF_MAX_SECONDS, 2 ** (crashes_in_window - 2)))


@dataclass
class ControllerHandle:
    pid: int = 0
    create_time: float | None = None
    cmd_w: int = -1
    events: LineReader | None = None
    alive: bool = False
    started_at: float | None = None
    state: str = "stopped"
    idle_since: float | None = None
    autostop_at: float | None = None
    exit_reason: str | None = None
    services: list[str] = field(default_factory=list)


class ServicesSupervisor:
    def __init__(
        self,
        paths: Paths,
        settings: Settings,
        *,
        selector: selectors.BaseSelector,
        key: str,
        instance_id: str,
        cgroup_caps: Any,
        cgroup_base: str,
        memory_mechanism: str,
        clock: Callable[[], float] = time.time,
        spawn: Spawner = spawn_controller,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.services_dir = paths.services_dir
        self.selector = selector
        self.key = key
        self.instance_id = instance_id
        self.cgroup_caps = cgroup_caps
        self.cgroup_base = cgroup_base
        self.memory_mechanism = memory_mechanism
        self.clock = clock
        self.spawn = spawn
        self.signature: tuple[Any, ...] | None = None
        self.desired: dict[str, DesiredService] = {}
        self.handle = ControllerHandle()
        self.restarts = 0
        self.crash_times: list[float] = []
        self.crashed = False
        self.next_start_at: float | None = None
        self.shutting_down = False
        self.kill_deadline: float | None = None
        self.stop_requested = False
        self.exited_since_last_tick = False

    # -- the tick step ------------------------------------------------------------------------

    def reconcile(self, now: float) -> bool:
        """One tick: read controller events, notice desired changes, start/stop/restart.

        Returns True when something shown in the server's status changed.
        """
        changed = self.read_events() or self.exited_since_last_tick
        self.exited_since_last_tick = False
        if self.shutting_down:
            return self.enforce_shutdown_deadline(now) or changed
        signature = desired_signature(self.services_dir)
        if signature != self.signature:
            self.signature = signature
            self.desired = read_all_desired(self.services_dir)
            if self.any_up():
                self.stop_requested = False
            if self.handle.alive:
                send_message(self.handle.cmd_w, {"op": "reload"})
        intent = take_controller_intent(self.services_dir)
        if intent is not None:
            changed |= self.handle_intent(intent)
        wanted = self.any_up() and not self.handle.alive and not self.stop_requested
        if wanted and (self.next_start_at is None or now >= self.next_start_at):
            self.start_controller(now)
            changed = True
        return changed

    def any_up(self) -> bool:
        return any(d.is_up for d in self.desired.values())

    def handle_intent(self, intent: dict[str, Any]) -> bool:
        if intent.get("op") != "stop":
            log.warning("ignoring unknown services-controller intent %r", intent.get("op"))
            return False
        up = sorted(n for n, d in self.desired.items() if d.is_up)
        if up and not intent.get("force"):
            log.warning(
                "not stopping the services-controller: service(s) %s are up (use --force)",
                ", ".join(up),
            )
            return False
        self.stop_requested = True
        if self.handle.alive:
            log.info("stopping the services-controller (sky-mini down services-controller)")
            send_message(self.handle.cmd_w, {"op": "exit", "reason": "stopped by user"})
        return True

    def start_controller(self, now: float) -> None:
        config = ControllerConfig(
            server_pid=os.getpid(),
            services_dir=self.services_dir,
            home_key=self.key,
            instance_id=self.instance_id,
            cgroup_caps=self.cgroup_caps,
            cgroup_base=self.cgroup_base,
            memory_mechanism=self.memory_mechanism,
            kill_grace_seconds=self.settings.kill_grace_seconds,
            idle_minutes=self.settings.controller_idle_minutes,
            disabled=self.settings.disabled,
            backoff_initial=backoff_initial_from_env(),
        )
        pid, cmd_w, evt_r = self.spawn(config)
        handle = ControllerHandle(
            pid=pid,
            create_time=procs.process_create_time(pid),
            cmd_w=cmd_w,
            events=LineReader(evt_r),
            alive=True,
            started_at=now,
            state="starting",
        )
        self.handle = handle
        # A fresh fd number can only be stale in the map if someone closed it unregistered.
        with contextlib.suppress(KeyError):
            self.selector.unregister(evt_r)
        self.selector.register(evt_r, selectors.EVENT_READ, "services")
        if self.crashed:
            self.restarts += 1
            self.crashed = False
        self.next_start_at = None
        log.info(
            "forked the services-controller (pid %d) for %s",
            pid,
            ", ".join(sorted(n for n, d in self.desired.items() if d.is_up)),
        )

    def read_events(self) -> bool:
        events = self.handle.events
        if events is None:
            return False
        changed = False
        for message in events.read_messages():
            kind = message.get("event")
            if kind == "status":
                self.handle.state = str(message.get("state") or "running")
                self.handle.idle_since = message.get("idle_since")
                self.handle.autostop_at = message.get("autostop_at")
                self.handle.services = list(message.get("services") or [])
                changed = True
            elif kind == "exiting":
                self.handle.exit_reason = str(message.get("reason") or "")
                self.handle.state = "stopping"
                changed = True
        if events.eof:
            self.close_pipes()
        return changed

    def close_pipes(self) -> None:
        handle = self.handle
        if handle.events is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(handle.events.fd)
            with contextlib.suppress(OSError):
                os.close(handle.events.fd)
            handle.events = None
        if handle.cmd_w >= 0:
            with contextlib.suppress(OSError):
                os.close(handle.cmd_w)
            handle.cmd_w = -1

    def child_exited(self, pid: int, status: int) -> None:
        handle = self.handle
        if not handle.alive or pid != handle.pid:
            return
        self.read_events()
        self.close_pipes()
        handle.alive = False
        self.exited_since_last_tick = True
        now = self.clock()
        returncode = procs.returncode_from_status(status)
        # Whatever the controller left (a replica's setsid'd child, say) carries our marker.
        killed = []
        if "sweep" not in self.settings.disabled:
            killed = procs.sweep_marked([f"{self.key}:{self.instance_id}:svc-"])
        if returncode == 0 and not self.shutting_down:
            why = handle.exit_reason or "exited"
            log.info("services-controller (pid %d) exited: %s", pid, why)
            handle.state = "stopped"
            handle.autostop_at = None
            return
        if self.shutting_down:
            handle.state = "stopped"
            return
        self.crashed = True
        self.crash_times = [t for t in self.crash_times if now - t < CRASH_WINDOW_SECONDS]
        self.crash_times.append(now)
        delay = crash_delay(len(self.crash_times))
        self.next_start_at = now + delay
        handle.state = "backoff" if delay else "dead"
        from sky_mini.server.backends.local.pool import describe_returncode

        log.warning(
            "services-controller (pid %d) died (%s)%s; %s",
            pid,
            describe_returncode(returncode),
            f", killed {len(killed)} leftover replica process(es)" if killed else "",
            f"restarting it in {delay:g}s" if delay else "restarting it",
        )

    # -- what the server asks ------------------------------------------------------------------

    def has_work(self) -> bool:
        """True while a service is desired up: the auto-started server must not idle out."""
        return self.any_up()

    def should_run(self) -> bool:
        return self.any_up() and not self.shutting_down and not self.stop_requested

    def components(self) -> list[dict[str, Any]]:
        handle = self.handle
        row: dict[str, Any] = {
            "name": CONTROLLER_NAME,
            "kind": CONTROLLER_NAME,
            "pid": handle.pid if handle.alive else None,
            "create_time": handle.create_time if handle.alive else None,
            "state": handle.state if handle.alive or handle.state == "backoff" else "stopped",
            "job_id": None,
            "started_at": handle.started_at if handle.alive else None,
            "restarts": self.restarts,
            "should_run": self.should_run(),
            "services": sorted(n for n, d in self.desired.items() if d.is_up),
        }
        if handle.alive and handle.autostop_at is not None:
            row["autostop_at"] = handle.autostop_at
        return [row]

    def status_json(self) -> dict[str, Any]:
        return {
            "controller_pid": self.handle.pid if self.handle.alive else None,
            "controller_state": self.components()[0]["state"],
            "autostop_at": self.handle.autostop_at if self.handle.alive else None,
            "services_up": sorted(n for n, d in self.desired.items() if d.is_up),
            "restarts": self.restarts,
        }

    def shutdown(self, grace: float) -> None:
        """Server shutdown: the controller stops its replicas (TERM, grace, KILL) and exits.

        The desired state is kept, so the services come back with the next server.
        """
        self.shutting_down = True
        if self.handle.alive:
            send_message(
                self.handle.cmd_w, {"op": "exit", "reason": "server shutdown", "grace": grace}
            )
            self.kill_deadline = self.clock() + grace + SHUTDOWN_EXTRA_SECONDS

    def enforce_shutdown_deadline(self, now: float) -> bool:
        handle = self.handle
        if not handle.alive or self.kill_deadline is None or now < self.kill_deadline:
            return False
        log.warning("services-controller (pid %d) did not stop in time: killing it", handle.pid)
        if procs.is_same_process(handle.pid, handle.create_time):
            procs.signal_pid(handle.pid, signal.SIGKILL)
        if "sweep" not in self.settings.disabled:
            procs.sweep_marked([f"{self.key}:{self.instance_id}:svc-"])
        self.kill_deadline = None
        return True

    def is_stopped(self) -> bool:
        return not self.handle.alive
