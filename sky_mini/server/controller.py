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
import errno
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sky_mini import procs
from sky_mini.server.channel import LineReader, send_message
from sky_mini.server.tied import LoopSignals, parent_gone, parent_sentinel
from sky_mini.services import (
    LB_HOST,
    SCHEMA_VERSION,
    DesiredService,
    ReplicaState,
    ServiceStatus,
    controller_facts_path,
    facts_path,
    read_all_desired,
    read_service_facts,
    replica_log_path,
    service_dir,
    setup_log_path,
)
from sky_mini.state import atomic_write_json
from sky_mini.units import format_duration, format_size

log = logging.getLogger("sky_mini.services")

BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
BACKOFF_RESET_READY_SECONDS = 60.0
"""A replica READY this long gets its backoff reset to the initial delay."""
FAILURE_WINDOW_SECONDS = 300.0
MAX_FAILURES_IN_WINDOW = 5
"""This many failures within the window end the replica FAILED."""
BACKOFF_ENV = "SKY_MINI_SERVICE_BACKOFF_SECONDS"
"""Test/tuning knob: the initial backoff in seconds (default 1)."""

PROBE_FIRST_INTERVAL_SECONDS = 0.1
PROBE_STARTING_MAX_INTERVAL_SECONDS = 1.0
PROBE_READY_INTERVAL_SECONDS = 2.0
NOT_READY_AFTER_FAILURES = 3
NOT_READY_RESTART_SECONDS = 30.0
"""A replica NOT_READY this long is restarted (counts as a failure)."""
STARTUP_TIMEOUT_SECONDS = 300.0
"""A replica not READY this long after ``initial_delay_seconds`` is restarted."""
PROBE_RESPONSE_LIMIT = 4096

LB_BACKLOG = 128
LB_BIND_RETRY_SECONDS = 2.0
PROXY_CHUNK = 65536
PROXY_BUFFER_LIMIT = 256 * 1024
# What was sent to a replica is kept until its first response byte, so a request whose
# replica died before answering (e.g. killed after the kernel accepted the connection on its
# listen backlog) is replayed to another READY replica, as HAProxy's "retry-on
# empty-response" does. Requests larger than this are not retried.
REPLAY_LIMIT = 64 * 1024
ACCEPTS_PER_EVENT = 64

LOOP_MAX_SLEEP_SECONDS = 1.0
WATCHDOG_INTERVAL_SECONDS = 0.1
REPLICA_OOM_SCORE_ADJ = 500
SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


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


@dataclass
class RestartPolicy:
    """Exponential backoff for one replica, with a failure window that ends in FAILED."""

    initial: float = BACKOFF_INITIAL_SECONDS
    maximum: float = BACKOFF_MAX_SECONDS
    window: float = FAILURE_WINDOW_SECONDS
    max_failures: int = MAX_FAILURES_IN_WINDOW
    reset_after: float = BACKOFF_RESET_READY_SECONDS
    next_delay: float = -1.0
    failures: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.next_delay < 0:
            self.next_delay = self.initial

    def on_failure(self, now: float) -> float | None:
        """Record a failure at ``now``: the delay before the next start, or None for FAILED."""
        self.failures = [t for t in self.failures if now - t < self.window]
        self.failures.append(now)
        if len(self.failures) >= self.max_failures:
            return None
        delay = self.next_delay
        self.next_delay = min(self.next_delay * 2, self.maximum)
        return delay

    def on_ready_for(self, seconds: float) -> None:
        """The replica has been READY ``seconds`` without a break: reset the backoff."""
        if seconds >= self.reset_after:
            self.next_delay = self.initial

    def reset(self) -> None:
        self.next_delay = self.initial
        self.failures = []


def parse_http_status(data: bytes) -> int | None:
    """The status code of an HTTP response's first line (``HTTP/1.0 200 OK``), or None."""
    line = data.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def service_status(
    states: list[ReplicaState],
    *,
    stopping: bool,
    ever_ready: bool,
    blocking_problem: str | None,
    failed_reasons: list[str],
    setup_running: bool,
) -> tuple[ServiceStatus, str | None]:
    """A service's status and reason from its replicas' states."""
    if stopping:
        return ServiceStatus.SHUTTING_DOWN, "stopping its replicas"
    if blocking_problem:
        return ServiceStatus.FAILED, blocking_problem
    ready = sum(1 for s in states if s is ReplicaState.READY)
    failed = sum(1 for s in states if s is ReplicaState.FAILED)
    note = None
    if failed:
        note = f"{failed} of {len(states)} replica(s) FAILED: {failed_reasons[0]}"
    if ready:
        return ServiceStatus.READY, note
    if states and failed == len(states):
        return ServiceStatus.FAILED, failed_reasons[0] if failed_reasons else "all replicas failed"
    if setup_running:
        return ServiceStatus.REPLICA_INIT, "running setup"
    if ever_ready:
        return ServiceStatus.NO_REPLICA, note or "no replica is READY; the load balancer refuses"
    return ServiceStatus.REPLICA_INIT, note


def backoff_initial_from_env(env: dict[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(BACKOFF_ENV)
    if not raw:
        return BACKOFF_INITIAL_SECONDS
    try:
        return max(0.01, float(raw))
    except ValueError:
        return BACKOFF_INITIAL_SECONDS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LB_HOST, 0))
        return int(sock.getsockname()[1])


def describe_signal(signum: int) -> str:
    try:
        return f"signal {signum} {signal.Signals(signum).name}"
    except ValueError:
        return f"signal {signum}"


# --------------------------------------------------------------------------- records


@dataclass
class ControllerConfig:
    """What the controller needs from the server; inherited across fork."""

    server_pid: int
    services_dir: str
    home_key: str
    instance_id: str
    cgroup_caps: Any  # sky_mini.cgroups.CgroupCapabilities | None
    cgroup_base: str
    memory_mechanism: str  # "cgroup" | "watchdog"
    kill_grace_seconds: float
    idle_minutes: float | None
    disabled: frozenset[str] = frozenset()
    backoff_initial: float = BACKOFF_INITIAL_SECONDS


@dataclass
class Replica:
    index: int
    policy: RestartPolicy
    state: ReplicaState = ReplicaState.BACKOFF
    pid: int = 0
    create_time: float | None = None
    port: int | None = None
    cgroup: Any = None  # sky_mini.cgroups.JobCgroup | None
    started_at: float | None = None
    ready_since: float | None = None
    not_ready_since: float | None = None
    next_start_at: float | None = 0.0
    next_probe_at: float | None = None
    probe_interval: float = PROBE_FIRST_INTERVAL_SECONDS
    probe_failures: int = 0
    last_probe_error: str | None = None
    probe: Probe | None = None
    restarts: int = 0
    starts: int = 0
    stop_reason: str | None = None  # down | replace | shutdown | not_ready | memory_limit ...
    kill_at: float | None = None
    last_exit_reason: str | None = None
    last_reason_code: str | None = None
    last_exit_code: int | None = None
    failed_reason: str | None = None
    peak_bytes: int = 0
    next_sample_at: float = 0.0
    vmstat_at_start: int | None = None
    served: int = 0

    def to_json(self, log_path: str) -> dict[str, Any]:
        return {
            "index": self.index,
            # A replica that never ran yet is about to start, not backing off.
            "state": (
                ReplicaState.STARTING.value
                if self.state is ReplicaState.BACKOFF and not self.starts
                else self.state.value
            ),
            "pid": self.pid or None,
            "create_time": self.create_time,
            "port": self.port,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "ready_since": self.ready_since,
            "next_start_at": self.next_start_at if self.state is ReplicaState.BACKOFF else None,
            "last_exit_reason": self.last_exit_reason,
            "last_reason_code": self.last_reason_code,
            "last_exit_code": self.last_exit_code,
            "failed_reason": self.failed_reason,
            "last_probe_error": self.last_probe_error,
            "connections_served": self.served,
            "log_path": log_path,
        }


@dataclass
class SetupProc:
    pid: int = 0
    cgroup: Any = None
    state: str = "pending"  # pending | running | done | failed
    reason: str | None = None


class ServiceRuntime:
    """One generation of one service inside the controller."""

    def __init__(self, desired: DesiredService, spec: Any, policy: RestartPolicy) -> None:
        self.desired = desired
        self.spec = spec  # sky_mini.spec.ServiceSpec
        self.name: str = spec.name
        self.generation = desired.generation
        self.replicas = [
            Replica(index=i + 1, policy=RestartPolicy(initial=policy.initial))
            for i in range(spec.replicas)
        ]
        self.listener: socket.socket | None = None
        self.lb_port: int | None = spec.port
        self.lb_error: str | None = None
        self.next_bind_at = 0.0
        self.rr = 0
        self.ever_ready = False
        self.stopping = False
        self.retiring = False  # replaced by a newer generation: writes no facts
        self.stop_why: str | None = None  # down | replace | shutdown
        self.setup = SetupProc(state="pending" if spec.setup else "done")
        self.connections: set[Connection] = set()
        self.dirty = True

    def log_path(self, services_dir: str, index: int) -> str:
        return replica_log_path(services_dir, self.name, index)

    def alive_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.pid]

    def has_processes(self) -> bool:
        return bool(self.alive_replicas()) or bool(self.setup.pid)

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.state is ReplicaState.READY and r.port]


# --------------------------------------------------------------------------- sockets


class Probe:
    """One readiness check: TCP connect, then (with a path) ``GET path`` and a 2xx answer."""

    def __init__(self, replica: Replica, path: str | None, timeout: float, now: float) -> None:
        self.replica = replica
        self.path = path
        self.deadline = now + timeout
        self.timeout = timeout
        self.sent = False
        self.buffer = b""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.error = self.sock.connect_ex((LB_HOST, replica.port or 0))

    def request(self) -> bytes:
        return (
            f"GET {self.path} HTTP/1.0\r\nHost: {LB_HOST}:{self.replica.port}\r\n"
            "User-Agent: sky-mini-probe\r\nConnection: close\r\n\r\n"
        ).encode()


class Connection:
    """A proxied client connection and its upstream replica connection."""

    def __init__(self, runtime: ServiceRuntime, client: socket.socket) -> None:
        self.runtime = runtime
        self.client = client
        self.upstream: socket.socket | None = None
        self.replica: Replica | None = None
        self.tried: set[int] = set()
        self.connecting = False
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.client_eof = False
        self.upstream_eof = False
        self.client_shut = False
        self.upstream_shut = False
        self.closed = False
        self.replay = bytearray()  # bytes sent upstream, kept until the first answer byte
        self.answered = False


# --------------------------------------------------------------------------- the controller


class Controller:
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
        self.interest: dict[int, int] = {}
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
            ready = self.selector.select(self.next_timeout(now))
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

    def all_runtimes(self) -> list[ServiceRuntime]:
        return [*self.services.values(), *self.retiring]

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
        self.bind_lb(rt, now)
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

    # -- load balancer ----------------------------------------------------------------------

    def bind_lb(self, rt: ServiceRuntime, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LB_HOST, rt.lb_port or 0))
            sock.listen(LB_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"{LB_HOST}:{rt.lb_port}" if rt.lb_port else LB_HOST
            problem = f"the load balancer cannot listen on {where}: {exc.strerror or exc}"
            if exc.errno == errno.EADDRINUSE:
                problem += " (another program uses it); choose another 'port' or free it"
            if rt.lb_error != problem:
                log.warning("services-controller: service %s: %s", rt.name, problem)
            rt.lb_error = problem
            rt.next_bind_at = now + LB_BIND_RETRY_SECONDS
            rt.dirty = True
            return
        rt.listener = sock
        rt.lb_port = int(sock.getsockname()[1])
        rt.lb_error = None
        rt.dirty = True
        self.selector.register(sock, selectors.EVENT_READ, ("lb", rt))
        log.info(
            "services-controller: service %s load balancer on %s",
            rt.name,
            f"{LB_HOST}:{rt.lb_port}",
        )

    def close_lb(self, rt: ServiceRuntime) -> None:
        if rt.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(rt.listener)
            rt.listener.close()
            rt.listener = None
        for conn in list(rt.connections):
            self.close_connection(conn)

    def accept_clients(self, rt: ServiceRuntime) -> None:
        if rt.listener is None:
            return
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                client, _addr = rt.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("services-controller: accept on %s failed: %s", rt.name, exc)
                return
            client.setblocking(False)
            conn = Connection(rt, client)
            if not self.connect_upstream(conn):
                # No READY replica: fail at once rather than leave the client hanging.
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # with linger 0: a reset, which clients report at once
                continue
            rt.connections.add(conn)
            self.update_interest(conn)

    def pick_replica(self, rt: ServiceRuntime, tried: set[int]) -> Replica | None:
        """Round-robin over READY replicas, skipping those already tried for this client."""
        ready = [r for r in rt.ready_replicas() if r.index not in tried]
        if not ready:
            return None
        choice = ready[rt.rr % len(ready)]
        rt.rr += 1
        return choice

    def connect_upstream(self, conn: Connection) -> bool:
        """Start connecting to the next READY replica; False when none is left to try."""
        while True:
            replica = self.pick_replica(conn.runtime, conn.tried)
            if replica is None:
                return False
            conn.tried.add(replica.index)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            code = upstream.connect_ex((LB_HOST, replica.port or 0))
            if code not in (0, errno.EINPROGRESS):
                upstream.close()
                continue
            conn.upstream = upstream
            conn.replica = replica
            conn.connecting = True
            return True

    def handle_connection(self, conn: Connection, sock: socket.socket, mask: int) -> None:
        if conn.closed:
            return
        try:
            if sock is conn.upstream and conn.connecting:
                if mask & selectors.EVENT_WRITE:
                    self.finish_connect(conn)
            elif sock is conn.client:
                if mask & selectors.EVENT_READ:
                    conn.client_eof |= self.pump_in(conn.client, conn.to_upstream)
                if mask & selectors.EVENT_WRITE:
                    self.pump_out(conn.client, conn.to_client)
            elif sock is conn.upstream:
                try:
                    self.pump_upstream(conn, mask)
                except OSError:
                    if not self.retry_elsewhere(conn):
                        raise
        except OSError:
            self.close_connection(conn)
            return
        if conn.closed:
            return
        self.propagate_shutdowns(conn)
        if not conn.closed:
            self.update_interest(conn)

    def pump_upstream(self, conn: Connection, mask: int) -> None:
        assert conn.upstream is not None
        if mask & selectors.EVENT_READ:
            before = len(conn.to_client)
            eof = self.pump_in(conn.upstream, conn.to_client)
            if len(conn.to_client) > before:
                conn.answered = True
                conn.replay.clear()
            if eof and not conn.answered and self.retry_elsewhere(conn):
                return
            conn.upstream_eof |= eof
        if mask & selectors.EVENT_WRITE and conn.upstream is not None:
            pending = bytes(conn.to_upstream)
            self.pump_out(conn.upstream, conn.to_upstream)
            if not conn.answered:
                conn.replay += pending[: len(pending) - len(conn.to_upstream)]

    def retry_elsewhere(self, conn: Connection) -> bool:
        """The replica closed or reset before answering: replay to another READY replica.

        Returns False when the request cannot be retried (already answered, too large, or
        no other replica); the caller then closes the client connection.
        """
        if conn.answered or len(conn.replay) > REPLAY_LIMIT or conn.upstream is None:
            return False
        self.drop_socket(conn.upstream)
        conn.upstream = None
        conn.to_upstream[:0] = conn.replay
        conn.replay = bytearray()
        conn.upstream_eof = False
        conn.upstream_shut = False
        if not self.connect_upstream(conn):
            self.close_connection(conn)
        return True

    def finish_connect(self, conn: Connection) -> None:
        assert conn.upstream is not None
        err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            conn.connecting = False
            if conn.replica is not None:
                conn.replica.served += 1
            return
        # The replica went away since it was last probed: try another before giving up.
        self.drop_socket(conn.upstream)
        conn.upstream = None
        if not self.connect_upstream(conn):
            self.close_connection(conn)

    @staticmethod
    def pump_in(sock: socket.socket, buffer: bytearray) -> bool:
        """Read what is available into ``buffer``; True at EOF."""
        while len(buffer) < PROXY_BUFFER_LIMIT:
            try:
                chunk = sock.recv(PROXY_CHUNK)
            except (BlockingIOError, InterruptedError):
                return False
            if not chunk:
                return True
            buffer += chunk
        return False

    @staticmethod
    def pump_out(sock: socket.socket, buffer: bytearray) -> None:
        while buffer:
            try:
                sent = sock.send(buffer)
            except (BlockingIOError, InterruptedError):
                return
            del buffer[:sent]

    def propagate_shutdowns(self, conn: Connection) -> None:
        if conn.connecting:
            return
        if conn.client_eof and not conn.to_upstream and not conn.upstream_shut:
            conn.upstream_shut = True
            if conn.upstream is not None:
                with contextlib.suppress(OSError):
                    conn.upstream.shutdown(socket.SHUT_WR)
        if conn.upstream_eof and not conn.to_client and not conn.client_shut:
            conn.client_shut = True
            with contextlib.suppress(OSError):
                conn.client.shutdown(socket.SHUT_WR)
        if conn.client_shut and conn.upstream_shut:
            self.close_connection(conn)

    def update_interest(self, conn: Connection) -> None:
        client_events = 0
        if not conn.client_eof and len(conn.to_upstream) < PROXY_BUFFER_LIMIT:
            client_events |= selectors.EVENT_READ
        if conn.to_client:
            client_events |= selectors.EVENT_WRITE
        self.set_interest(conn.client, client_events, ("conn", conn))
        if conn.upstream is None:
            return
        upstream_events = 0
        if conn.connecting:
            upstream_events = selectors.EVENT_WRITE
        else:
            if not conn.upstream_eof and len(conn.to_client) < PROXY_BUFFER_LIMIT:
                upstream_events |= selectors.EVENT_READ
            if conn.to_upstream:
                upstream_events |= selectors.EVENT_WRITE
        self.set_interest(conn.upstream, upstream_events, ("conn", conn))

    def set_interest(self, sock: socket.socket, events: int, data: Any) -> None:
        fd = sock.fileno()
        current = self.interest.get(fd, 0)
        if events == current:
            return
        if current == 0:
            self.selector.register(sock, events, data)
        elif events == 0:
            self.selector.unregister(sock)
        else:
            self.selector.modify(sock, events, data)
        if events:
            self.interest[fd] = events
        else:
            self.interest.pop(fd, None)

    def drop_socket(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0 and self.interest.pop(fd, 0):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
        sock.close()

    def close_connection(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        for sock in (conn.client, conn.upstream):
            if sock is not None:
                self.drop_socket(sock)
        conn.runtime.connections.discard(conn)

    # -- probes ---------------------------------------------------------------------------

    def start_probe(self, rt: ServiceRuntime, replica: Replica, now: float) -> None:
        spec_probe = rt.spec.readiness_probe
        path = spec_probe.path if spec_probe is not None else None
        timeout = spec_probe.timeout_seconds if spec_probe is not None else 5.0
        probe = Probe(replica, path, timeout, now)
        replica.probe = probe
        replica.next_probe_at = None
        if probe.error not in (0, errno.EINPROGRESS):
            self.finish_probe(rt, probe, False, os.strerror(probe.error), now)
            return
        self.selector.register(probe.sock, selectors.EVENT_WRITE, ("probe", (rt, probe)))

    def handle_probe(self, rt: ServiceRuntime, probe: Probe, mask: int, now: float) -> None:
        if probe.replica.probe is not probe:
            return
        try:
            if not probe.sent:
                err = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.finish_probe(rt, probe, False, os.strerror(err), now)
                    return
                if probe.path is None:
                    self.finish_probe(rt, probe, True, "TCP connect succeeded", now)
                    return
                probe.sock.send(probe.request())
                probe.sent = True
                self.selector.modify(probe.sock, selectors.EVENT_READ, ("probe", (rt, probe)))
                return
            chunk = probe.sock.recv(PROBE_RESPONSE_LIMIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.finish_probe(rt, probe, False, exc.strerror or str(exc), now)
            return
        probe.buffer += chunk
        if b"\n" in probe.buffer or not chunk or len(probe.buffer) >= PROBE_RESPONSE_LIMIT:
            code = parse_http_status(probe.buffer)
            if code is None:
                self.finish_probe(rt, probe, False, "no HTTP response", now)
            else:
                self.finish_probe(rt, probe, 200 <= code < 300, f"GET {probe.path}: {code}", now)

    def finish_probe(
        self, rt: ServiceRuntime, probe: Probe, ok: bool, detail: str, now: float
    ) -> None:
        replica = probe.replica
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(probe.sock)
        probe.sock.close()
        if replica.probe is probe:
            replica.probe = None
        if not replica.pid or replica.stop_reason is not None:
            return
        if ok:
            replica.probe_failures = 0
            replica.last_probe_error = None
            replica.not_ready_since = None
            if replica.state is not ReplicaState.READY:
                replica.state = ReplicaState.READY
                replica.ready_since = now
                rt.ever_ready = True
                rt.dirty = True
                log.info(
                    "services-controller: %s replica %d READY (pid %d, port %s)",
                    rt.name,
                    replica.index,
                    replica.pid,
                    replica.port,
                )
            replica.policy.on_ready_for(now - (replica.ready_since or now))
            replica.next_probe_at = now + PROBE_READY_INTERVAL_SECONDS
            return
        if replica.last_probe_error != detail:
            replica.last_probe_error = detail
            rt.dirty = True
        replica.probe_failures += 1
        if replica.state is ReplicaState.READY:
            if replica.probe_failures >= NOT_READY_AFTER_FAILURES:
                replica.state = ReplicaState.NOT_READY
                replica.ready_since = None
                replica.not_ready_since = now
                rt.dirty = True
                log.warning(
                    "services-controller: %s replica %d NOT_READY: %s",
                    rt.name,
                    replica.index,
                    detail,
                )
            replica.next_probe_at = now + PROBE_READY_INTERVAL_SECONDS
        else:
            replica.probe_interval = min(
                replica.probe_interval * 2, PROBE_STARTING_MAX_INTERVAL_SECONDS
            )
            replica.next_probe_at = now + replica.probe_interval

    def expire_probes(self, rt: ServiceRuntime, now: float) -> None:
        for replica in rt.replicas:
            probe = replica.probe
            if probe is not None and now >= probe.deadline:
                self.finish_probe(rt, probe, False, f"no answer within {probe.timeout:g}s", now)

    # -- replicas -----------------------------------------------------------------------------

    def step(self, now: float) -> None:
        """Advance every service: binds, setup, starts, probes, deadlines, memory limits."""
        for rt in list(self.retiring):
            self.step_kills(rt, now)
            if not rt.has_processes():
                self.retiring.remove(rt)
                self.remove_cgroups(rt)
        for rt in list(self.services.values()):
            self.step_kills(rt, now)
            if rt.stopping:
                if not rt.has_processes() and rt.stop_why == "down":
                    self.forget(rt)
                continue
            if rt.listener is None and now >= rt.next_bind_at:
                self.bind_lb(rt, now)
            if rt.setup.state == "pending":
                self.start_setup(rt, now)
            if rt.setup.state != "done":
                continue
            self.expire_probes(rt, now)
            for replica in rt.replicas:
                self.step_replica(rt, replica, now)

    def step_kills(self, rt: ServiceRuntime, now: float) -> None:
        for replica in rt.replicas:
            if replica.pid and replica.kill_at is not None and now >= replica.kill_at:
                log.warning(
                    "services-controller: %s replica %d ignored SIGTERM for %gs: SIGKILL",
                    rt.name,
                    replica.index,
                    self.config.kill_grace_seconds,
                )
                self.kill_replica(replica)
                replica.kill_at = None
            if replica.pid:
                self.enforce_memory(rt, replica, now)

    def step_replica(self, rt: ServiceRuntime, replica: Replica, now: float) -> None:
        state = replica.state
        if state is ReplicaState.BACKOFF and not replica.pid:
            if replica.next_start_at is not None and now >= replica.next_start_at:
                self.spawn_replica(rt, replica, now)
            return
        if not replica.pid or replica.stop_reason is not None:
            return
        due = replica.next_probe_at
        if replica.probe is None and due is not None and now >= due:
            self.start_probe(rt, replica, now)
        if state is ReplicaState.READY and replica.ready_since is not None:
            replica.policy.on_ready_for(now - replica.ready_since)
        probe_spec = rt.spec.readiness_probe
        delay = probe_spec.initial_delay_seconds if probe_spec is not None else 0.0
        if (
            state is ReplicaState.STARTING
            and replica.started_at is not None
            and now - replica.started_at > delay + STARTUP_TIMEOUT_SECONDS
        ):
            detail = replica.last_probe_error or "no answer"
            self.stop_replica(
                rt,
                replica,
                "startup_timeout",
                now,
                f"not READY {format_duration(delay + STARTUP_TIMEOUT_SECONDS)} after start "
                f"(readiness probe: {detail})",
            )
        elif (
            state is ReplicaState.NOT_READY
            and replica.not_ready_since is not None
            and now - replica.not_ready_since >= NOT_READY_RESTART_SECONDS
        ):
            self.stop_replica(
                rt,
                replica,
                "not_ready",
                now,
                f"NOT_READY for {NOT_READY_RESTART_SECONDS:g}s "
                f"(readiness probe: {replica.last_probe_error})",
            )

    def replica_env(self, rt: ServiceRuntime, replica: Replica) -> dict[str, str]:
        env = dict(rt.desired.env or os.environ)
        env.update(rt.spec.envs)
        env["PORT"] = str(replica.port)
        env["SKY_MINI_SERVICE"] = rt.name
        env["SKY_MINI_REPLICA"] = str(replica.index)
        env[procs.MARKER_ENV] = procs.marker_for(
            f"{self.config.home_key}:{self.config.instance_id}",
            f"svc-{rt.name}-{replica.index}",
        )
        return env

    def create_cgroup(self, rt: ServiceRuntime, group: str) -> Any:
        caps = self.config.cgroup_caps
        if caps is None or "cgroup" in self.config.disabled:
            return None
        from sky_mini.cgroups import JobCgroup

        limit = rt.spec.resources.memory_bytes
        if self.config.memory_mechanism != "cgroup":
            limit = None
        try:
            return JobCgroup.create(caps, self.config.cgroup_base, group, limit)
        except (OSError, ValueError) as exc:
            log.warning("services-controller: no cgroup for %s: %s", group, exc)
            return None

    def spawn_replica(self, rt: ServiceRuntime, replica: Replica, now: float) -> None:
        replica.port = free_port()
        group = f"svc-{rt.name}-g{rt.generation}-{replica.index}"
        replica.cgroup = self.create_cgroup(rt, group)
        log_path = rt.log_path(self.config.services_dir, replica.index)
        if replica.starts:
            replica.restarts += 1
        replica.starts += 1
        append_line(
            log_path,
            f"sky-mini: starting {rt.name} replica {replica.index} on port {replica.port} "
            f"(start {replica.starts}, restarts {replica.restarts})",
        )
        replica.vmstat_at_start = procs.read_vmstat_oom_kills()
        pid = self.spawn_process(
            rt.spec.run,
            self.replica_env(rt, replica),
            log_path,
            rt.spec.workdir,
            replica.cgroup,
        )
        replica.pid = pid
        replica.create_time = procs.process_create_time(pid)
        replica.state = ReplicaState.STARTING
        replica.started_at = now
        replica.ready_since = None
        replica.not_ready_since = None
        replica.stop_reason = None
        replica.kill_at = None
        replica.peak_bytes = 0
        replica.probe_failures = 0
        replica.probe_interval = PROBE_FIRST_INTERVAL_SECONDS
        probe_spec = rt.spec.readiness_probe
        replica.next_probe_at = now + (
            probe_spec.initial_delay_seconds if probe_spec is not None else 0.0
        )
        rt.dirty = True

    def start_setup(self, rt: ServiceRuntime, now: float) -> None:
        log_path = setup_log_path(self.config.services_dir, rt.name)
        append_line(log_path, f"sky-mini: running setup of {rt.name} (generation {rt.generation})")
        cgroup = self.create_cgroup(rt, f"svc-{rt.name}-g{rt.generation}-setup")
        env = dict(rt.desired.env or os.environ)
        env.update(rt.spec.envs)
        env[procs.MARKER_ENV] = procs.marker_for(
            f"{self.config.home_key}:{self.config.instance_id}", f"svc-{rt.name}-setup"
        )
        rt.setup = SetupProc(
            pid=self.spawn_process(rt.spec.setup, env, log_path, rt.spec.workdir, cgroup),
            cgroup=cgroup,
            state="running",
        )
        rt.dirty = True

    def spawn_process(
        self, command: str, env: dict[str, str], log_path: str, workdir: str | None, cgroup: Any
    ) -> int:
        procs_files = cgroup.procs_files() if cgroup is not None else ()
        pid = os.fork()
        if pid == 0:
            exec_replica(
                command,
                env,
                log_path,
                workdir or os.getcwd(),
                procs_files,
                oom_score="oom_score" not in self.config.disabled,
            )
        return pid

    def stop_replica(
        self, rt: ServiceRuntime, replica: Replica, why: str, now: float, detail: str = ""
    ) -> None:
        """TERM the replica's group now, KILL what is left after the grace period."""
        if not replica.pid:
            replica.next_start_at = None  # a replica waiting in BACKOFF never starts
            return
        if replica.stop_reason is not None:
            return  # already stopping; rt.stopping keeps it from being restarted
        replica.stop_reason = why
        if detail:
            replica.last_exit_reason = detail
        replica.state = ReplicaState.STOPPING
        replica.kill_at = now + max(0.0, self.config.kill_grace_seconds)
        self.signal_replica(replica, signal.SIGTERM)
        self.cancel_probe(replica)
        rt.dirty = True
        if detail:
            log.warning(
                "services-controller: %s replica %d: %s; restarting it",
                rt.name,
                replica.index,
                detail,
            )

    def cancel_probe(self, replica: Replica) -> None:
        probe = replica.probe
        if probe is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(probe.sock)
            probe.sock.close()
            replica.probe = None
        replica.next_probe_at = None

    def stop_runtime(self, rt: ServiceRuntime, why: str, now: float) -> None:
        rt.stopping = True
        rt.stop_why = rt.stop_why or why
        rt.dirty = True
        self.close_lb(rt)
        for replica in rt.replicas:
            if replica.pid:
                self.stop_replica(rt, replica, why, now)
            else:
                replica.next_start_at = None
        if rt.setup.pid:
            procs.signal_group(rt.setup.pid, signal.SIGKILL)

    def forget(self, rt: ServiceRuntime) -> None:
        """A stopped service leaves no facts behind (clients then stop waiting)."""
        self.remove_cgroups(rt)
        del self.services[rt.name]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(facts_path(self.config.services_dir, rt.name))
        self.published.pop(rt.name, None)
        log.info("services-controller: service %s stopped", rt.name)

    def remove_cgroups(self, rt: ServiceRuntime) -> None:
        for replica in rt.replicas:
            if replica.cgroup is not None and not replica.pid:
                replica.cgroup.remove()
                replica.cgroup = None

    def signal_replica(self, replica: Replica, sig: int) -> None:
        if replica.pid:
            procs.signal_group(replica.pid, sig)
        if replica.cgroup is not None:
            for pid in replica.cgroup.pids():
                procs.signal_pid(pid, sig)

    def kill_replica(self, replica: Replica) -> None:
        if replica.cgroup is not None:
            replica.cgroup.kill()
        if replica.pid:
            procs.signal_group(replica.pid, signal.SIGKILL)

    @staticmethod
    def watchdog_limit(rt: ServiceRuntime, replica: Replica) -> int | None:
        """The memory limit the RSS watchdog enforces (None: a cgroup does it, or no limit)."""
        limit: int | None = rt.spec.resources.memory_bytes
        if limit is None or (replica.cgroup is not None and replica.cgroup.memory_limited):
            return None
        return limit

    def enforce_memory(self, rt: ServiceRuntime, replica: Replica, now: float) -> None:
        limit = self.watchdog_limit(rt, replica)
        if limit is None or now < replica.next_sample_at or replica.stop_reason is not None:
            return
        replica.next_sample_at = now + WATCHDOG_INTERVAL_SECONDS
        rss = procs.tree_rss(replica.pid)
        replica.peak_bytes = max(replica.peak_bytes, rss)
        if rss > limit:
            replica.stop_reason = "memory_limit"
            replica.state = ReplicaState.STOPPING
            self.kill_replica(replica)
            rt.dirty = True

    def reap_children(self, now: float) -> None:
        for pid, status in procs.reap_any():
            for rt in self.all_runtimes():
                if rt.setup.pid == pid:
                    self.setup_exited(rt, status, now)
                    break
                replica = next((r for r in rt.replicas if r.pid == pid), None)
                if replica is not None:
                    self.replica_exited(rt, replica, status, now)
                    break

    def setup_exited(self, rt: ServiceRuntime, status: int, now: float) -> None:
        setup = rt.setup
        if setup.cgroup is not None:
            setup.cgroup.kill()
        procs.signal_group(setup.pid, signal.SIGKILL)
        if setup.cgroup is not None:
            setup.cgroup.remove()
        setup.pid = 0
        setup.cgroup = None
        rt.dirty = True
        if rt.stopping:
            return
        returncode = procs.returncode_from_status(status)
        if returncode == 0:
            setup.state = "done"
            for replica in rt.replicas:
                replica.next_start_at = now
            return
        how = (
            f"killed by {describe_signal(-returncode)}"
            if returncode < 0
            else f"exited with code {returncode}"
        )
        setup.state = "failed"
        setup.reason = (
            f"setup {how}; see 'sky-mini services logs {rt.name} --setup', fix it and run "
            "'sky-mini services up' again"
        )
        log.warning("services-controller: service %s: %s", rt.name, setup.reason)

    def replica_exited(self, rt: ServiceRuntime, replica: Replica, status: int, now: float) -> None:
        """The replica's main process is gone: kill the rest of it, classify, maybe restart."""
        self.kill_replica(replica)
        self.cancel_probe(replica)
        returncode = procs.returncode_from_status(status)
        code, reason, exit_code = self.classify(rt, replica, returncode)
        if replica.cgroup is not None:
            replica.cgroup.remove()
            replica.cgroup = None
        stop_reason = replica.stop_reason
        replica.pid = 0
        replica.create_time = None
        replica.port = None
        replica.kill_at = None
        replica.ready_since = None
        replica.stop_reason = None
        rt.dirty = True
        log_path = rt.log_path(self.config.services_dir, replica.index)
        if stop_reason in ("down", "replace", "shutdown"):
            replica.state = ReplicaState.STOPPING
            replica.next_start_at = None
            append_line(log_path, f"sky-mini: replica {replica.index} stopped ({stop_reason})")
            return
        if stop_reason in ("not_ready", "startup_timeout") and replica.last_exit_reason:
            reason = replica.last_exit_reason
            code = stop_reason
        replica.last_exit_reason = reason
        replica.last_reason_code = code
        replica.last_exit_code = exit_code
        if rt.stopping or self.exiting is not None:
            replica.state = ReplicaState.STOPPING
            return
        delay = replica.policy.on_failure(now)
        if delay is None:
            window = format_duration(replica.policy.window)
            replica.state = ReplicaState.FAILED
            replica.next_start_at = None
            replica.failed_reason = (
                f"replica {replica.index} failed {len(replica.policy.failures)} times within "
                f"{window}; last: {reason}; see 'sky-mini services logs {rt.name} "
                f"--replica {replica.index}'"
            )
            append_line(log_path, f"sky-mini: {replica.failed_reason}; giving up")
            log.warning("services-controller: %s: %s", rt.name, replica.failed_reason)
            return
        replica.state = ReplicaState.BACKOFF
        replica.next_start_at = now + delay
        append_line(
            log_path,
            f"sky-mini: replica {replica.index} {reason}; restarting in {delay:g}s",
        )
        log.warning(
            "services-controller: %s replica %d %s; restarting in %gs",
            rt.name,
            replica.index,
            reason,
            delay,
        )

    def classify(
        self, rt: ServiceRuntime, replica: Replica, returncode: int
    ) -> tuple[str, str, int | None]:
        """(reason_code, reason, exit_code) of a replica's death."""
        from sky_mini.cgroups import classify_memory_death

        limit = rt.spec.resources.memory_bytes
        peak = replica.peak_bytes
        oom_kills = None
        if replica.cgroup is not None:
            peak = max(peak, replica.cgroup.peak_memory_bytes() or 0)
            oom_kills = replica.cgroup.oom_kills_since_start()
        killed_by = -returncode if returncode < 0 else None
        exit_code = returncode if returncode >= 0 else 128 + (killed_by or 0)
        if oom_kills is None and killed_by == signal.SIGKILL and replica.stop_reason is None:
            vmstat = procs.read_vmstat_oom_kills()
            if vmstat is not None and replica.vmstat_at_start is not None:
                oom_kills = vmstat - replica.vmstat_at_start or None
        memory = classify_memory_death(limit, peak or None, oom_kills, killed_by)
        if replica.stop_reason == "memory_limit" or memory == "memory_limit":
            return (
                "memory_limit",
                f"out of memory: used {format_size(max(peak, limit or 0))}, limit "
                f"{format_size(limit)} — raise resources.memory",
                exit_code,
            )
        if memory == "oom":
            return (
                "oom",
                "out of memory: killed by the kernel's OOM killer (the machine or container "
                f"ran out of memory; peak {format_size(peak)}); set resources.memory",
                exit_code,
            )
        if killed_by is not None:
            return "signal", f"killed by {describe_signal(killed_by)}", exit_code
        if returncode == 0:
            return (
                "exit_code",
                "exited with code 0 (a replica must keep serving until 'services down')",
                0,
            )
        return "exit_code", f"exited with code {returncode}", exit_code

    # -- dispatch -----------------------------------------------------------------------------

    def dispatch(self, data: Any, fileobj: Any, mask: int, now: float) -> None:
        kind, payload = data
        if kind == "lb":
            self.accept_clients(payload)
        elif kind == "conn":
            self.handle_connection(payload, fileobj, mask)
        elif kind == "probe":
            rt, probe = payload
            self.handle_probe(rt, probe, mask, now)

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
            self.close_lb(rt)
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
            self.close_lb(rt)
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


# --------------------------------------------------------------------------- process helpers


def exec_replica(
    command: str,
    env: dict[str, str],
    log_path: str,
    workdir: str,
    procs_files: tuple[str, ...],
    *,
    oom_score: bool,
) -> NoReturn:
    """In the forked child: become the replica and exec its shell. Never returns."""
    try:
        parent = os.getppid()
        os.setsid()
        if procs_files:
            from sky_mini.cgroups import join_cgroup_files

            join_cgroup_files(procs_files)
        if oom_score:
            procs.set_oom_score_adj(REPLICA_OOM_SCORE_ADJ)
        procs.set_parent_death_signal(signal.SIGKILL, parent)
        procs.reset_signals_for_exec()
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        log_fd = os.open(log_path, flags, 0o600)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        procs.close_fds_except((0, 1, 2))
        try:
            os.chdir(workdir)
        except OSError as exc:
            os.write(2, f"sky-mini: cannot enter workdir {workdir}: {exc}\n".encode())
            os._exit(127)
        os.execve(SHELL, [SHELL, "-c", command], env)
    except BaseException as exc:  # noqa: BLE001 - the child must never return into Python
        with contextlib.suppress(BaseException):
            os.write(2, f"sky-mini: cannot start the replica: {exc}\n".encode())
    os._exit(127)


def append_line(path: str, line: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"{stamp} {line}\n".encode())
        finally:
            os.close(fd)


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
