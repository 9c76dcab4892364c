"""The load balancer in worker processes, on a machine with 2 CPUs or more.

One Python thread proxies about 0.4x what nginx serves directly on 2 cores (the byte path
is at its minimum; the rest is the interpreter). So with at least 2 usable CPUs (the
server's detected capacity: cgroup quota, affinity, ``SKY_MINI_CPUS``) each service's load
balancer runs in :func:`lb_worker_count` processes titled ``sky-mini: lb <service>``, each
with its own listening socket on the service's port (``SO_REUSEPORT``: the kernel spreads
new connections over them) and the same :class:`~sky_mini.services.lb.LoadBalancer` code,
so replay and failover follow exactly the same rules. With fewer CPUs the balancer stays
inside the controller (no extra process on a 1-CPU box). Two at most: a third worker on 2
cores only competes with the replicas and the clients for the same CPUs.

The controller keeps a bound socket that does not listen (it holds the port, so a bind error
is seen as before, and a restarted worker binds it again), pushes each worker the replicas
it marked READY (index and port) whenever that set changes, and reads back the connections
each worker served. A worker routes only to replicas in the last set it was sent.

Workers are tied children of the controller (:mod:`sky_mini.server.tied`): parent-death
signal, the parent sentinel and the command pipe's EOF each make a worker close everything
and exit at once; each also writes the home's ``SKY_MINI_MARKER`` into its own environment
block (:func:`mark_environment`) so the server's sweep finds it. ``services down`` stops a
service's workers before the controller goes on (:meth:`LBWorkers.stop`, synchronous).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from sky_mini import procs
from sky_mini.server import tied
from sky_mini.server.channel import LineReader, send_message
from sky_mini.services.desired import LB_HOST, ReplicaState
from sky_mini.services.lb import LB_BACKLOG, LoadBalancer, open_listener
from sky_mini.services.model import ControllerConfig, ServiceRuntime

log = logging.getLogger("sky_mini.services")

LB_WORKERS_MAX = 2
"""Measured on 2 cores: 2 workers ~0.55x nginx direct, 1 (in the controller) ~0.40x."""
WORKER_STOP_SECONDS = 2.0
"""How long ``stop`` waits for a worker to exit after its pipe closed, before SIGKILL."""
WORKER_RESTART_SECONDS = 1.0
SERVED_REPORT_SECONDS = 0.5
WORKER_MAX_SLEEP_SECONDS = 1.0


def lb_worker_count(cpus: float) -> int:
    """Worker processes for each load balancer: 0 (in the controller) below 2 CPUs."""
    count = min(LB_WORKERS_MAX, math.floor(cpus + 1e-9))
    return count if count >= 2 else 0


@dataclass
class Worker:
    """The controller's handle on one load-balancer worker."""

    slot: int
    child: tied.TiedChild
    events: LineReader
    ready: list[list[int]] | None = None  # the READY set last sent
    connections: int = 0


@dataclass
class ServiceWorkers:
    rt: ServiceRuntime
    workers: dict[int, Worker] = field(default_factory=dict)  # by slot
    restart_at: dict[int, float] = field(default_factory=dict)  # slot -> when


class LBWorkers:
    """Every service's load-balancer workers, seen from the controller's selector."""

    def __init__(
        self, count: int, config: ControllerConfig, selector: selectors.BaseSelector
    ) -> None:
        self.count = count
        self.config = config
        self.selector = selector
        self.services: dict[int, ServiceWorkers] = {}  # by id(runtime)

    def bind(self, rt: ServiceRuntime, now: float) -> None:
        """Hold the port (a bound socket that does not listen) and start the workers."""
        holder = open_listener(rt, now, reuse_port=True, listen=False)
        if holder is None:
            return
        rt.listener = holder
        group = self.services.setdefault(id(rt), ServiceWorkers(rt))
        for slot in range(self.count):
            self.start_worker(rt, group, slot)
        log.info(
            "services-controller: service %s load balancer on %s (%d worker processes)",
            rt.name,
            f"{LB_HOST}:{rt.lb_port}",
            len(group.workers),
        )

    def start_worker(self, rt: ServiceRuntime, group: ServiceWorkers, slot: int) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((LB_HOST, rt.lb_port or 0))
            sock.listen(LB_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            log.warning("services-controller: service %s: no LB worker socket: %s", rt.name, exc)
            group.restart_at[slot] = time.time() + WORKER_RESTART_SECONDS
            return
        config = self.config
        marker = procs.marker_for(f"{config.home_key}:{config.instance_id}", f"svc-lb-{rt.name}")
        try:
            child = tied.start_tied(
                f"lb {rt.name}",
                config.disabled,
                lambda cmd_fd, evt_fd: worker_main(rt, sock, marker, config, cmd_fd, evt_fd),
                keep=frozenset({sock.fileno()}),
            )
        finally:
            sock.close()  # the worker has its own copy
        worker = Worker(slot, child, LineReader(child.evt_r))
        group.workers[slot] = worker
        group.restart_at.pop(slot, None)
        # Its exit is seen by the controller's reap_children (the sentinel only wakes it).
        self.selector.register(child.evt_r, selectors.EVENT_READ, ("lbw", (rt, worker)))
        self.selector.register(child.sentinel, selectors.EVENT_READ, ("lbw-exit", None))
        self.sync(rt)

    def sync(self, rt: ServiceRuntime) -> None:
        """Send each worker the READY replicas when they differ from what it has."""
        group = self.services.get(id(rt))
        if group is None:
            return
        ready = [[r.index, r.port or 0] for r in rt.ready_replicas()]
        for worker in group.workers.values():
            if worker.ready != ready:
                worker.ready = ready
                send_message(worker.child.cmd_w, {"op": "ready", "replicas": ready})

    def sync_all(self, runtimes: list[ServiceRuntime]) -> None:
        for rt in runtimes:
            self.sync(rt)

    def reaped(self, pid: int, status: int, now: float) -> bool:
        """``tied.reap_children`` reaped ``pid``: if it was a worker, note it and restart it
        (after a delay) unless its service is stopping. False if it was not a worker."""
        for group in self.services.values():
            worker = next((w for w in group.workers.values() if w.child.pid == pid), None)
            if worker is None:
                continue
            self.forget(worker)
            self.read_events(group.rt, worker)
            del group.workers[worker.slot]
            rt = group.rt
            if not rt.stopping:
                log.warning(
                    "services-controller: service %s LB worker (pid %d) exited (code %d): "
                    "restarting it",
                    rt.name,
                    pid,
                    procs.returncode_from_status(status),
                )
                group.restart_at[worker.slot] = now + WORKER_RESTART_SECONDS
            return True
        return False

    def read_events(self, rt: ServiceRuntime, worker: Worker) -> None:
        by_index = {r.index: r for r in rt.replicas}
        for message in worker.events.read_messages():
            if message.get("event") != "served":
                continue
            for index, count in (message.get("replicas") or {}).items():
                replica = by_index.get(int(index))
                if replica is not None:
                    replica.served += int(count)
                worker.connections += int(count)
            rt.dirty = True

    def step(self, rt: ServiceRuntime, now: float) -> None:
        """Restart a worker that died, once its delay is over."""
        group = self.services.get(id(rt))
        if group is None or rt.stopping or rt.listener is None:
            return
        for slot, when in list(group.restart_at.items()):
            if now >= when:
                self.start_worker(rt, group, slot)

    def next_moment(self) -> float | None:
        moments = [t for g in self.services.values() for t in g.restart_at.values()]
        return min(moments) if moments else None

    def processes(self, rt: ServiceRuntime) -> list[dict[str, Any]]:
        """For the service's facts: one row per worker."""
        group = self.services.get(id(rt))
        if group is None:
            return []
        return [
            {"pid": w.child.pid, "connections": w.connections}
            for w in sorted(group.workers.values(), key=lambda w: w.slot)
        ]

    def stop(self, rt: ServiceRuntime) -> None:
        """Stop ``rt``'s workers and wait for them (their connections close as they exit)."""
        group = self.services.pop(id(rt), None)
        if group is None:
            return
        workers = list(group.workers.values())
        for worker in workers:
            self.forget(worker)
            with contextlib.suppress(OSError):
                os.close(worker.child.cmd_w)  # EOF: the worker closes everything and exits
        deadline = time.monotonic() + WORKER_STOP_SECONDS
        for worker in workers:
            worker.child.process.join(max(0.0, deadline - time.monotonic()))
            if worker.child.process.exitcode is None:
                log.warning(
                    "services-controller: LB worker (pid %d) did not exit: SIGKILL",
                    worker.child.pid,
                )
                procs.signal_pid(worker.child.pid, signal.SIGKILL)
                worker.child.process.join(WORKER_STOP_SECONDS)
            self.read_events(rt, worker)
            tied.reap_tied(worker.child.pid)

    def kill_all(self) -> None:
        """The server is gone: SIGKILL every worker now (the caller reaps)."""
        for group in self.services.values():
            for worker in group.workers.values():
                procs.signal_pid(worker.child.pid, signal.SIGKILL)

    def forget(self, worker: Worker) -> None:
        for fd in (worker.child.evt_r, worker.child.sentinel):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(fd)

    def forget_fd(self, fd: int) -> None:
        """For ``tied.reap_children``: a worker's sentinel is about to be closed."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(fd)


# --------------------------------------------------------------------------- in the worker

_KEPT: list[Any] = []
"""Objects copied from the controller whose descriptors were closed after the fork: kept
referenced for good, so no finalizer ever closes a descriptor number reused since."""


def worker_main(
    rt: ServiceRuntime,
    sock: socket.socket,
    marker: str,
    config: ControllerConfig,
    cmd_fd: int,
    evt_fd: int,
) -> int:
    """A worker's life: proxy ``rt``'s connections from ``sock`` until told or orphaned."""
    from sky_mini.services.controller import reset_logging_after_fork

    reset_logging_after_fork()
    mark_environment(marker)
    signals = tied.LoopSignals()
    signals.install()
    selector = selectors.DefaultSelector()
    balancer = LoadBalancer(selector)
    _KEPT.extend([rt.listener, set(rt.connections)])
    rt.listener = sock
    rt.connections = set()
    apply_ready(rt, [])
    commands = LineReader(cmd_fd)
    selector.register(sock, selectors.EVENT_READ, ("lb", rt))
    selector.register(cmd_fd, selectors.EVENT_READ, ("cmd", None))
    selector.register(signals.read_fd, selectors.EVENT_READ, ("sig", None))
    sentinel = tied.parent_sentinel()
    if sentinel is not None:
        selector.register(sentinel, selectors.EVENT_READ, ("parent", None))
    reported = {r.index: r.served for r in rt.replicas}  # (the controller's, at the fork)
    report_at = time.monotonic() + SERVED_REPORT_SECONDS
    while True:
        ready = selector.select(max(0.0, report_at - time.monotonic()))
        if balancer.handle_events(ready) or not ready:
            signals.drain()
            if signals.term_received:
                break
            for message in commands.read_messages():
                if message.get("op") == "ready":
                    apply_ready(rt, message.get("replicas") or [])
            if commands.eof or tied.parent_gone():
                if "pipe" not in config.disabled:
                    break
                # Test-only negative control: ignore the controller's death on both pipes.
                for fd in (cmd_fd, -1 if sentinel is None else sentinel):
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(fd)
        if time.monotonic() >= report_at:
            report_at = time.monotonic() + SERVED_REPORT_SECONDS
            delta = {r.index: r.served - reported.get(r.index, 0) for r in rt.replicas}
            delta = {i: n for i, n in delta.items() if n}
            if delta:
                reported.update({r.index: r.served for r in rt.replicas})
                send_message(evt_fd, {"event": "served", "replicas": delta})
    balancer.close(rt)
    return 0


def apply_ready(rt: ServiceRuntime, replicas: list[Any]) -> None:
    """Mark READY exactly the replicas the controller sent (index, port); none else."""
    ports = {int(index): int(port) for index, port in replicas}
    for replica in rt.replicas:
        if replica.index in ports:
            replica.state = ReplicaState.READY
            replica.port = ports[replica.index]
        else:
            replica.state = ReplicaState.NOT_READY


def mark_environment(marker: str) -> bool:
    """Put ``SKY_MINI_MARKER=<marker>`` at the front of this process's environment block.

    ``/proc/<pid>/environ`` shows the block the kernel set up at ``exec``; a forked worker
    that never execs has the server's, without a marker, and ``os.environ`` changes are not
    seen there. So the block is rewritten in place (this process's own copy-on-write memory):
    the marker, then as many of the original entries as still fit. libc's ``environ`` is
    first rebuilt from ``os.environ`` so no ``getenv`` reads the rewritten bytes. False if
    the block is too small or unknown (then only the other ties hold).
    """
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
    except (OSError, IndexError, ValueError):
        return False
    room = end - start
    entry = f"{procs.MARKER_ENV}={marker}".encode() + b"\0"
    if room <= len(entry) or start <= 0:
        log.debug("lb worker: no room for the marker in the environment block (%d)", room)
        return False
    original = ctypes.string_at(start, room)
    kept = b""
    for item in original.split(b"\0"):
        if item and not item.startswith(f"{procs.MARKER_ENV}=".encode()):
            if len(entry) + len(kept) + len(item) + 1 > room:
                break
            kept += item + b"\0"
    block = entry + kept
    libc = ctypes.CDLL(None, use_errno=True)
    environ = dict(os.environ)
    libc.clearenv()
    for key, value in environ.items():
        os.putenv(key, value)
    ctypes.memmove(start, block + b"\0" * (room - len(block)), room)
    return True
