"""A service's runtime records inside the controller: replicas, setup, restart policy.

:class:`ServiceRuntime` is one generation of one service; :class:`Replica` one of its
processes with its readiness and restart bookkeeping; :class:`RestartPolicy` the
exponential backoff and failure window (1 s doubling to 60 s, reset after 60 s READY;
5 failures in 5 minutes => FAILED). Pure data and pure decisions: no sockets, no processes.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sky_mini.services.desired import (
    LB_HOST,
    DesiredService,
    ReplicaState,
    ServiceStatus,
    replica_log_path,
)

if TYPE_CHECKING:
    from sky_mini.services.lb import Connection
    from sky_mini.services.probes import Probe

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


def describe_signal(signum: int) -> str:
    try:
        return f"signal {signum} {signal.Signals(signum).name}"
    except ValueError:
        return f"signal {signum}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LB_HOST, 0))
        return int(sock.getsockname()[1])


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
