"""The services-controller: one process that runs every service's replicas and load balancers.

Lifecycle (``sky-mini: services-controller``):
1. forked from the server's main thread when a service is desired up; sets
   ``PR_SET_PDEATHSIG(SIGTERM)``, re-checks ``getppid()``, becomes a child subreaper and closes
   every descriptor but its two pipes (like a job executor);
2. runs one selector loop: the command pipe (``reload``/``exit``; EOF = server gone), the
   load-balancer sockets, proxied connections and readiness probes are all non-blocking, so
   no thread is ever needed. Replicas are forked only from this main thread, because
   ``PR_SET_PDEATHSIG`` fires when the forking *thread* exits;
3. each replica runs ``run`` in its own session and process group, in a per-replica cgroup
   (``svc-<name>-g<generation>-<n>``) with the service's memory limit (or under the RSS
   watchdog), with ``$PORT`` set to a free port on 127.0.0.1 and the home's
   ``SKY_MINI_MARKER`` in its environment; its output is appended to
   ``services/<name>/replica-<n>.log``;
4. writes facts to ``services/<name>.state.json`` and ``services/_controller.json`` and
   sends ``status`` events to the server;
5. with no service up it stays warm ``services.controller.idle_minutes``, then exits 0
   (:func:`decide_autostop`); when the server is gone (SIGTERM or pipe EOF) it SIGKILLs every
   replica group and cgroup at once and exits.

Replica restarts use :class:`RestartPolicy` (backoff 1 s doubling to 60 s, reset after 60 s
READY; 5 failures in 5 minutes => FAILED).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sky_mini import procs
from sky_mini.server.channel import LineReader, send_message
from sky_mini.server.tied import LoopSignals, parent_gone, parent_sentinel
from sky_mini.services.desired import (
    LB_HOST,
    SCHEMA_VERSION,
    DesiredService,
    ReplicaState,
    ServiceStatus,
    controller_facts_path,
    facts_path,
    read_all_desired,
    read_service_facts,
    service_dir,
)
from sky_mini.services.lb import LoadBalancer
from sky_mini.services.model import (
    ControllerConfig,
    RestartPolicy,
    ServiceRuntime,
    SetupProc,
    service_status,
)
from sky_mini.services.probes import Prober
from sky_mini.services.replicas import WATCHDOG_INTERVAL_SECONDS, ReplicaLifecycle, append_line
from sky_mini.state import atomic_write_json
from sky_mini.units import format_duration

log = logging.getLogger("sky_mini.services")

LOOP_MAX_SLEEP_SECONDS = 1.0


# --------------------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class Autostop:
    """The controller's idle decision at one moment."""

    idle_since: float | None
    autostop_at: float | None
    exit_now: bool


def decide_autostop(
    *, idle_since: float | None, busy: bool, idle_minutes: float | None, now: float
) -> Autostop:
    """Idle autostop as a pure function of (state, now).

    ``busy`` means some service is desired up or some replica process still runs. Busy
    cancels the countdown; the first idle moment starts it; the controller exits once
    ``now >= idle_since + idle_minutes * 60`` (never when ``idle_minutes`` is None).
    """
    if busy:
        return Autostop(idle_since=None, autostop_at=None, exit_now=False)
    since = now if idle_since is None else idle_since
    if idle_minutes is None:
        return Autostop(idle_since=since, autostop_at=None, exit_now=False)
    at = since + idle_minutes * 60.0
    return Autostop(idle_since=since, autostop_at=at, exit_now=now >= at)


# --------------------------------------------------------------------------- the controller


class Controller(ReplicaLifecycle):
    """The controller's loop; its replicas part lives in :class:`ReplicaLifecycle`."""

    def __init__(
        self,
        config: ControllerConfig,
        cmd_fd: int,
        evt_fd: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.commands = LineReader(cmd_fd)
        self.evt_fd = evt_fd
        self.clock = clock
        self.services: dict[str, ServiceRuntime] = {}
        self.retiring: list[ServiceRuntime] = []
        self.selector = selectors.DefaultSelector()
        self.lb = LoadBalancer(self.selector)
        self.prober = Prober(self.selector)
        self.started_at = clock()
        self.create_time = procs.process_create_time(os.getpid())
        self.idle_since: float | None = None
        self.autostop_at: float | None = None
        self.exiting: str | None = None  # why we are stopping everything and exiting
        self.published: dict[str, Any] = {}
        self.controller_dirty = True
        self.signals = LoopSignals()

    # -- setup ------------------------------------------------------------------------

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        self.selector.register(self.commands.fd, selectors.EVENT_READ, ("cmd", None))
        self.selector.register(self.signals.read_fd, selectors.EVENT_READ, ("sig", None))
        sentinel = parent_sentinel()
        if sentinel is not None:
            self.selector.register(sentinel, selectors.EVENT_READ, ("parent", None))
        self.reload(self.clock())
        while True:
            now = self.clock()
            due = now + self.next_timeout(now)
            while True:
                # While only proxied traffic arrives and nothing is due, the rest of the loop
                # (signals, commands, reaping, steps, facts) has nothing to do: skip it.
                ready = self.selector.select(max(0.0, due - self.clock()))
                if not ready or self.clock() >= due:
                    break
                ready = self.lb.handle_events(ready)  # what is left is not the LB's
                if ready:
                    break
            now = self.clock()
            self.signals.drain()
            if self.signals.term_received:
                self.handle_server_gone("SIGTERM (the server is gone)")
                return 128 + signal.SIGTERM
            for key, mask in ready:
                self.dispatch(key.data, key.fileobj, mask, now)
            for message in self.commands.read_messages():
                self.handle_command(message, now)
            if self.commands.eof or parent_gone():
                if "pipe" not in self.config.disabled:
                    why = "command pipe closed" if self.commands.eof else "parent sentinel EOF"
                    self.handle_server_gone(f"{why} (the server is gone)")
                    return 0
                # Test-only negative control: ignore the server's death on both pipes.
                for fd in (self.commands.fd, -1 if sentinel is None else sentinel):
                    with contextlib.suppress(KeyError, ValueError):
                        self.selector.unregister(fd)
            self.reap_children(now)
            self.step(now)
            self.publish(now)
            if self.exiting is not None and not self.any_processes():
                self.finish(self.exiting, now)
                return 0
            if self.exiting is None and self.check_autostop(now):
                self.finish("idle", now)
                return 0

    def check_autostop(self, now: float) -> bool:
        """Track the idle countdown (published as ``autostop_at``); True when it is over."""
        decision = decide_autostop(
            idle_since=self.idle_since,
            busy=self.busy(),
            idle_minutes=self.config.idle_minutes,
            now=now,
        )
        if (decision.idle_since, decision.autostop_at) != (self.idle_since, self.autostop_at):
            self.idle_since, self.autostop_at = decision.idle_since, decision.autostop_at
            self.controller_dirty = True
            self.publish(now)
        if decision.exit_now:
            log.info(
                "services-controller: no service up for %s: stopping by itself",
                format_duration((self.config.idle_minutes or 0) * 60),
            )
        return decision.exit_now

    def busy(self) -> bool:
        return any(not rt.stopping for rt in self.services.values()) or self.any_processes()

    def any_processes(self) -> bool:
        return any(rt.has_processes() for rt in self.all_runtimes())

    def next_timeout(self, now: float) -> float:
        moments: list[float] = [now + LOOP_MAX_SLEEP_SECONDS]
        if self.autostop_at is not None:
            moments.append(self.autostop_at)
        for rt in self.all_runtimes():
            if rt.listener is None and rt.lb_error and not rt.stopping:
                moments.append(rt.next_bind_at)
            for replica in rt.replicas:
                for moment in (replica.kill_at, replica.next_probe_at):
                    if moment is not None:
                        moments.append(moment)
                if replica.probe is not None:
                    moments.append(replica.probe.deadline)
                startable = rt.setup.state == "done" and not rt.stopping
                if (
                    startable
                    and replica.state is ReplicaState.BACKOFF
                    and replica.next_start_at is not None
                ):
                    moments.append(replica.next_start_at)
                if replica.pid and self.watchdog_limit(rt, replica) is not None:
                    moments.append(now + WATCHDOG_INTERVAL_SECONDS)
        return max(0.0, min(moments) - now)

    # -- commands -------------------------------------------------------------------------

    def handle_command(self, message: dict[str, Any], now: float) -> None:
        op = message.get("op")
        if op == "reload":
            self.reload(now)
        elif op == "exit":
            self.begin_exit(str(message.get("reason") or "asked to stop"), now)

    def begin_exit(self, why: str, now: float) -> None:
        """Stop every replica (TERM, grace, KILL) and every load balancer; exit when done."""
        if self.exiting is not None:
            return
        self.exiting = why
        self.controller_dirty = True
        log.info("services-controller: stopping all services (%s)", why)
        for rt in self.all_runtimes():
            self.stop_runtime(rt, "shutdown", now)

    def reload(self, now: float) -> None:
        """Re-read the desired state and converge: start, replace or stop services."""
        if self.exiting is not None:
            return
        from sky_mini.spec import ServiceSpec

        desired_all = read_all_desired(self.config.services_dir)
        for name, desired in desired_all.items():
            current = self.services.get(name)
            if not desired.is_up:
                if current is not None and not current.stopping:
                    log.info("services-controller: service %s going down", name)
                    self.stop_runtime(current, "down", now)
                continue
            if (
                current is not None
                and current.generation == desired.generation
                and not current.stopping
            ):
                continue
            try:
                spec = ServiceSpec.from_json(desired.spec)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("services-controller: cannot read service %s: %s", name, exc)
                continue
            if current is not None and not current.stopping and current.spec == spec:
                self.refresh_runtime(current, desired, now)
                continue
            if current is not None:
                self.retire(current, now)
            self.start_runtime(desired, spec, now)
        for name, current in list(self.services.items()):
            if name not in desired_all and not current.stopping:
                self.stop_runtime(current, "down", now)

    def refresh_runtime(self, rt: ServiceRuntime, desired: DesiredService, now: float) -> None:
        """A new ``up`` of the same spec: adopt the generation, retry FAILED replicas."""
        rt.desired = desired
        rt.generation = desired.generation
        rt.dirty = True
        for replica in rt.replicas:
            if replica.state is ReplicaState.FAILED:
                replica.policy.reset()
                replica.failed_reason = None
                replica.state = ReplicaState.BACKOFF
                replica.next_start_at = now
        if rt.setup.state == "failed":
            rt.setup = SetupProc(state="pending")
        if rt.listener is None:
            rt.next_bind_at = now

    def retire(self, rt: ServiceRuntime, now: float) -> None:
        """Replace ``rt`` by a newer generation: it stops quietly and writes no facts."""
        del self.services[rt.name]
        rt.retiring = True
        if not rt.stopping:
            self.stop_runtime(rt, "replace", now)
        if rt.has_processes():
            self.retiring.append(rt)

    def start_runtime(self, desired: DesiredService, spec: Any, now: float) -> None:
        policy = RestartPolicy(initial=self.config.backoff_initial)
        rt = ServiceRuntime(desired, spec, policy)
        self.restore_from_facts(rt)
        self.services[rt.name] = rt
        os.makedirs(service_dir(self.config.services_dir, rt.name), mode=0o700, exist_ok=True)
        log.info(
            "services-controller: starting service %s (generation %d, %d replica(s))",
            rt.name,
            rt.generation,
            len(rt.replicas),
        )
        self.lb.bind(rt, now)
        for replica in rt.replicas:
            replica.next_start_at = now

    def restore_from_facts(self, rt: ServiceRuntime) -> None:
        """After a controller restart: keep the LB port and count the replicas' restarts."""
        facts = read_service_facts(self.config.services_dir, rt.name)
        if not facts or facts.get("generation") != rt.generation:
            return
        if rt.lb_port is None and isinstance(facts.get("lb_port"), int):
            rt.lb_port = facts["lb_port"]
        previous = {r.get("index"): r for r in facts.get("replicas") or [] if isinstance(r, dict)}
        for replica in rt.replicas:
            old = previous.get(replica.index)
            if not old:
                continue
            replica.restarts = int(old.get("restarts") or 0)
            replica.last_exit_reason = old.get("last_exit_reason")
            replica.last_reason_code = old.get("last_reason_code")
            replica.last_exit_code = old.get("last_exit_code")
            if old.get("pid"):
                replica.restarts += 1  # it ran when the previous controller died
                replica.last_exit_reason = "stopped with the previous services-controller"
                replica.last_reason_code = "supervisor_lost"

    # -- dispatch -----------------------------------------------------------------------------

    def dispatch(self, data: Any, fileobj: Any, mask: int, now: float) -> None:
        kind, payload = data
        if kind == "lb":
            self.lb.accept(payload)
        elif kind == "conn":
            self.lb.handle_connection(payload, fileobj, mask)
        elif kind == "probe":
            rt, probe = payload
            self.prober.handle(rt, probe, mask, now)

    # -- facts ---------------------------------------------------------------------------------

    def publish(self, now: float) -> None:
        """Write changed facts: each service's state file, the controller file, a status event."""
        for rt in self.services.values():
            if rt.dirty:
                rt.dirty = False
                self.write_service_facts(rt, now)
                self.controller_dirty = True
        if self.controller_dirty:
            self.controller_dirty = False
            self.write_controller_facts(now, self.controller_state())
            send_message(
                self.evt_fd,
                {
                    "event": "status",
                    "state": self.controller_state(),
                    "idle_since": self.idle_since,
                    "autostop_at": self.autostop_at,
                    "services": sorted(n for n, rt in self.services.items() if not rt.stopping),
                },
            )

    def controller_state(self) -> str:
        if self.exiting is not None:
            return "stopping"
        return "idle" if self.idle_since is not None else "running"

    def service_facts(self, rt: ServiceRuntime, now: float) -> dict[str, Any]:
        states = [r.state for r in rt.replicas]
        failed = [r.failed_reason for r in rt.replicas if r.failed_reason]
        blocking = rt.lb_error or (rt.setup.reason if rt.setup.state == "failed" else None)
        status, reason = service_status(
            states,
            stopping=rt.stopping,
            ever_ready=rt.ever_ready,
            blocking_problem=blocking,
            failed_reasons=failed,
            setup_running=rt.setup.state == "running",
        )
        waiting = [r for r in rt.replicas if r.pid and r.last_probe_error]
        if reason is None and status is not ServiceStatus.READY and waiting:
            reason = f"waiting for a READY replica (readiness probe: {waiting[0].last_probe_error})"
        return {
            "schema": SCHEMA_VERSION,
            "name": rt.name,
            "generation": rt.generation,
            "status": status.value,
            "reason": reason,
            "lb_host": LB_HOST,
            "lb_port": rt.lb_port,
            "controller_pid": os.getpid(),
            "updated_at": now,
            "setup": {"state": rt.setup.state, "reason": rt.setup.reason},
            "replicas": [
                r.to_json(rt.log_path(self.config.services_dir, r.index)) for r in rt.replicas
            ],
        }

    def write_service_facts(self, rt: ServiceRuntime, now: float) -> None:
        facts = self.service_facts(rt, now)
        previous = self.published.get(rt.name)
        if previous is None or previous.get("status") != facts["status"]:
            log.info(
                "services-controller: service %s %s%s",
                rt.name,
                facts["status"],
                f": {facts['reason']}" if facts["reason"] else "",
            )
        self.published[rt.name] = facts
        with contextlib.suppress(OSError):
            atomic_write_json(facts_path(self.config.services_dir, rt.name), facts, durable=False)

    def write_controller_facts(self, now: float, state: str, reason: str | None = None) -> None:
        facts = {
            "schema": SCHEMA_VERSION,
            "pid": os.getpid(),
            "create_time": self.create_time,
            "instance_id": self.config.instance_id,
            "started_at": self.started_at,
            "updated_at": now,
            "state": state,
            "idle_since": self.idle_since,
            "idle_minutes": self.config.idle_minutes,
            "autostop_at": self.autostop_at,
            "stop_reason": reason,
            "services": sorted(self.services),
        }
        with contextlib.suppress(OSError):
            atomic_write_json(controller_facts_path(self.config.services_dir), facts, durable=False)

    # -- the end --------------------------------------------------------------------------------

    def finish(self, why: str, now: float) -> None:
        """Everything is stopped: record the facts and tell the server why we exit."""
        for rt in self.all_runtimes():
            self.lb.close(rt)
            self.remove_cgroups(rt)
        for rt in self.services.values():
            # Kept for the next controller: the LB port and the replicas' restart counts.
            self.write_service_facts(rt, now)
        self.autostop_at = None
        self.write_controller_facts(now, "stopped", why)
        send_message(self.evt_fd, {"event": "exiting", "reason": why})
        log.info("services-controller: exiting (%s)", why)

    def handle_server_gone(self, why: str) -> None:
        """The server died: SIGKILL every replica and setup now, close every socket, exit."""
        runtimes = self.all_runtimes()
        for rt in runtimes:
            for replica in rt.replicas:
                if replica.pid or replica.cgroup is not None:
                    self.kill_replica(replica)
            if rt.setup.pid:
                if rt.setup.cgroup is not None:
                    rt.setup.cgroup.kill()
                procs.signal_group(rt.setup.pid, signal.SIGKILL)
        if "subreaper" not in self.config.disabled:
            procs.kill_descendants(os.getpid())
        for rt in runtimes:
            self.lb.close(rt)
        procs.reap_any()
        for rt in runtimes:
            for replica in rt.replicas:
                if replica.pid:
                    append_line(
                        rt.log_path(self.config.services_dir, replica.index),
                        f"sky-mini: {why}; replica {replica.index} killed",
                    )
                    replica.pid = 0
                if replica.cgroup is not None:
                    replica.cgroup.remove()
                    replica.cgroup = None
        log.warning("services-controller: %s; killed every replica", why)
        self.write_controller_facts(self.clock(), "stopped", "server gone")


_ABANDONED_HANDLERS: list[logging.Handler] = []


def reset_logging_after_fork() -> None:
    """Reopen the inherited log handlers: their descriptors were closed after the fork.

    The old handlers stay referenced forever: if their file objects were garbage-collected,
    the finalizer would close a descriptor number that now belongs to something else.
    """
    root = logging.getLogger("sky_mini")
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    old = list(root.handlers)
    files = [h.baseFilename for h in old if isinstance(h, logging.FileHandler)]
    for handler in old:
        root.removeHandler(handler)
        _ABANDONED_HANDLERS.append(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    for filename in files:
        with contextlib.suppress(OSError):
            handler = logging.FileHandler(filename)
            handler.setFormatter(formatter)
            root.addHandler(handler)
    if not old:
        root.setLevel(logging.INFO)
        root.propagate = False


def controller_main(config: ControllerConfig, cmd_fd: int, evt_fd: int) -> int:
    """The controller's life in its tied child (see ``tied.fork_tied``)."""
    reset_logging_after_fork()
    controller = Controller(config, cmd_fd, evt_fd)
    controller.signals.install()
    return controller.run()
