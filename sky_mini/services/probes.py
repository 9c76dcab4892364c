"""Readiness probes: non-blocking TCP connects and ``GET path`` checks on the controller's
selector, and what their answers mean for a replica (READY, NOT_READY after 3 failures).

:class:`Prober` owns every probe socket; the controller's loop calls :meth:`Prober.start`
when a probe is due, :meth:`Prober.handle` when its socket is ready, :meth:`Prober.expire`
each step, and :meth:`Prober.cancel` when a replica stops.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket

from sky_mini.services.desired import LB_HOST, ReplicaState
from sky_mini.services.model import Replica, ServiceRuntime

log = logging.getLogger("sky_mini.services")

PROBE_STARTING_MAX_INTERVAL_SECONDS = 1.0
PROBE_READY_INTERVAL_SECONDS = 2.0
NOT_READY_AFTER_FAILURES = 3
PROBE_RESPONSE_LIMIT = 4096


def parse_http_status(data: bytes) -> int | None:
    """The status code of an HTTP response's first line (``HTTP/1.0 200 OK``), or None."""
    line = data.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


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


class Prober:
    """Every readiness probe of the controller, on the controller's selector."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector

    def start(self, rt: ServiceRuntime, replica: Replica, now: float) -> None:
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

    def handle(self, rt: ServiceRuntime, probe: Probe, mask: int, now: float) -> None:
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

    def expire(self, rt: ServiceRuntime, now: float) -> None:
        for replica in rt.replicas:
            probe = replica.probe
            if probe is not None and now >= probe.deadline:
                self.finish_probe(rt, probe, False, f"no answer within {probe.timeout:g}s", now)

    def cancel(self, replica: Replica) -> None:
        probe = replica.probe
        if probe is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(probe.sock)
            probe.sock.close()
            replica.probe = None
        replica.next_probe_at = None
