"""The TCP load balancer: one listening socket per service on 127.0.0.1, proxied connections
round-robin over READY replicas, and replay of a request whose replica died before answering.

Replay is per request, also on a keep-alive connection: bytes from the client that follow an
answer start a new request, kept until its first answer byte. A request whose replica closed
or reset the connection before any byte of the answer is sent to another READY replica,
unless it is a non-idempotent HTTP request (POST, PATCH, ...), as nginx's
``proxy_next_upstream`` does.

The byte path is kept short, because one Python thread carries every service's traffic:
each readiness event is one ``recv_into`` a buffer the balancer reuses (a short read means
the socket is drained; epoll is level-triggered, so whatever comes later is reported again),
and what was read is sent on at once from that buffer (write-through); only what a full
socket buffer refuses is copied, and only then is write interest registered. An upstream
connection is used as soon as the client has something to send: a send to a connection
still being established fails with EAGAIN (then the balancer waits for it to turn
writable), one that was refused fails with its error (then the next replica is tried).
Once both directions are finished the sockets are closed without a ``shutdown`` first.

:class:`LoadBalancer` owns every listening socket and connection, on the controller's
selector (it registers them tagged ``("lb", runtime)`` and ``("conn", connection)``). The
loop calls :meth:`~LoadBalancer.bind`, :meth:`~LoadBalancer.close`,
:meth:`~LoadBalancer.accept` and :meth:`~LoadBalancer.handle_connection`, or
:meth:`~LoadBalancer.handle_events` for a whole ``select`` result.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import struct
from typing import Any

from sky_mini.services.desired import LB_HOST
from sky_mini.services.framing import ResponseTracker
from sky_mini.services.model import Replica, ServiceRuntime

log = logging.getLogger("sky_mini.services")

LB_BACKLOG = 128
LB_BIND_RETRY_SECONDS = 2.0
PROXY_CHUNK = 256 * 1024
PROXY_BUFFER_LIMIT = 256 * 1024
# What was sent to a replica is kept until its first response byte, so a request whose
# replica died before answering (e.g. killed after the kernel accepted the connection on its
# listen backlog) is replayed to another READY replica, as HAProxy's "retry-on
# empty-response" does. Requests larger than this are not retried.
REPLAY_LIMIT = 64 * 1024
ACCEPTS_PER_EVENT = 64
# Never replayed: a replica may have acted on these before it died (RFC 9110 9.2.2).
NON_IDEMPOTENT_METHODS = (b"POST ", b"PATCH ", b"CONNECT ", b"LOCK ", b"UNLOCK ")
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Connection:
    """A proxied client connection and its upstream replica connection."""

    __slots__ = (
        "runtime",
        "client",
        "upstream",
        "replica",
        "tried",
        "connecting",
        "to_upstream",
        "to_client",
        "client_eof",
        "upstream_eof",
        "client_shut",
        "upstream_shut",
        "closed",
        "replay",
        "answered",
        "responses",
        "steady",
    )

    def __init__(self, runtime: ServiceRuntime, client: socket.socket) -> None:
        self.runtime = runtime
        self.client = client
        self.upstream: socket.socket | None = None
        self.replica: Replica | None = None
        self.tried: set[int] = set()
        self.connecting = False  # connect() started; no send or answer has confirmed it yet
        self.to_upstream = bytearray()  # what a full socket buffer refused, in order
        self.to_client = bytearray()
        self.client_eof = False
        self.upstream_eof = False
        self.client_shut = False
        self.upstream_shut = False
        self.closed = False
        self.replay = bytearray()  # this request's bytes sent upstream, until its answer
        self.answered = False  # the replica answered what it was sent (no request in flight)
        self.responses = ResponseTracker()  # of the current upstream connection
        self.steady = False  # both sockets registered for reading only


class LoadBalancer:
    """Every service's listener and proxied connections, on the controller's selector."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.interest: dict[int, int] = {}
        self.scratch = bytearray(PROXY_CHUNK)  # every recv lands here, one at a time
        self.view = memoryview(self.scratch)

    def bind(self, rt: ServiceRuntime, now: float) -> None:
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
        self.selector.register(sock, READ, ("lb", rt))
        log.info(
            "services-controller: service %s load balancer on %s",
            rt.name,
            f"{LB_HOST}:{rt.lb_port}",
        )

    def close(self, rt: ServiceRuntime) -> None:
        if rt.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(rt.listener)
            rt.listener.close()
            rt.listener = None
        for conn in list(rt.connections):
            self.close_connection(conn)

    def accept(self, rt: ServiceRuntime) -> None:
        """Accept until the backlog is empty (at most ``ACCEPTS_PER_EVENT`` at a time)."""
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
            # The request has often arrived by now: read it at once, a selector round early.
            self.handle_connection(conn, client, READ)

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
            # SOCK_NONBLOCK: non-blocking from the start, without a separate ioctl
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            code = upstream.connect_ex((LB_HOST, replica.port or 0))
            if code not in (0, errno.EINPROGRESS):
                upstream.close()
                continue
            conn.upstream = upstream
            conn.replica = replica
            conn.connecting = True
            return True

    # -- events -------------------------------------------------------------------------

    def handle_events(self, ready: list[tuple[selectors.SelectorKey, int]]) -> list[Any]:
        """Handle the load balancer's events among ``ready``; return the others, in order."""
        others = []
        for key, mask in ready:
            kind, payload = key.data
            if kind == "conn":
                self.handle_connection(payload, key.fileobj, mask)  # type: ignore[arg-type]
            elif kind == "lb":
                self.accept(payload)
            else:
                others.append((key, mask))
        return others

    def handle_connection(self, conn: Connection, sock: socket.socket, mask: int) -> None:
        if conn.closed:
            return
        try:
            if sock is conn.client:
                if mask & READ:
                    self.client_readable(conn)
                if mask & WRITE and conn.to_client:
                    self.flush(conn.client, conn.to_client)
            elif sock is conn.upstream:
                if mask & READ:
                    self.upstream_readable(conn, sock)
                if mask & WRITE and conn.upstream is sock and not conn.closed:
                    if conn.to_upstream:
                        self.flush_upstream(conn)
                    elif conn.connecting:
                        self.connected(conn)  # nothing to send yet: it is established
        except OSError:
            self.close_connection(conn)  # the client's socket failed
            return
        if conn.closed or (
            conn.steady
            and not (conn.to_upstream or conn.to_client or conn.client_eof or conn.upstream_eof)
            and not conn.connecting  # (a new upstream socket is always connecting first)
        ):
            return  # the usual case: all forwarded, nothing to shut, the interest stays
        self.propagate_shutdowns(conn)
        if not conn.closed:
            self.update_interest(conn)

    def client_readable(self, conn: Connection) -> None:
        try:
            n = conn.client.recv_into(self.scratch)
        except (BlockingIOError, InterruptedError):
            return
        if not n:
            conn.client_eof = True
            return
        conn.answered = False  # bytes from the client: (part of) a request in flight
        data = self.view[:n]
        if conn.to_upstream or conn.upstream is None:
            conn.to_upstream += data  # keep the order behind what is already waiting
            return
        try:
            sent = conn.upstream.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0  # a full buffer, or still connecting: wait for write readiness
        except OSError:
            conn.to_upstream += data
            self.upstream_failed(conn)
            return
        if sent:
            if conn.connecting:
                self.connected(conn)
            conn.replay += data[:sent]
        if sent < n:
            conn.to_upstream += data[sent:]

    def flush_upstream(self, conn: Connection) -> None:
        assert conn.upstream is not None
        buffer = conn.to_upstream
        try:
            while buffer:
                sent = conn.upstream.send(buffer)
                self.connected(conn)
                if not conn.answered:
                    conn.replay += buffer[:sent]
                del buffer[:sent]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.upstream_failed(conn)

    def upstream_readable(self, conn: Connection, upstream: socket.socket) -> None:
        try:
            n = upstream.recv_into(self.scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # refused (a connect that failed) or reset
            self.upstream_failed(conn)
            return
        if n:
            self.forward_answer(conn, n)
            if not conn.responses.ending:
                return
            # The replica answered in full and said it closes: its close is most likely
            # queued behind the answer already, so take it now rather than a round later.
            try:
                n = upstream.recv_into(self.scratch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.upstream_failed(conn)
                return
            if n:
                self.forward_answer(conn, n)
                return
        if not conn.answered and self.retry_elsewhere(conn):
            return
        if self.switch_if_idle(conn):
            return
        conn.upstream_eof = True

    def forward_answer(self, conn: Connection, n: int) -> None:
        """Pass on the ``n`` bytes the replica sent (in the scratch buffer) to the client."""
        if conn.connecting:
            self.connected(conn)
        conn.answered = True
        if conn.replay:
            conn.replay.clear()
        data = self.view[:n]
        conn.responses.feed(data)
        if conn.to_client:
            conn.to_client += data
            return
        try:
            sent = conn.client.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < n:
            conn.to_client += data[sent:]

    def connected(self, conn: Connection) -> None:
        """The upstream connection is established (it took bytes or sent some)."""
        if conn.connecting:
            conn.connecting = False
            if conn.replica is not None:
                conn.replica.served += 1

    def upstream_failed(self, conn: Connection) -> None:
        """The upstream connection failed (refused, reset): replay or move on, else close."""
        if conn.connecting and conn.upstream is not None:
            # Never established (the replica went away since it was last probed): the next
            # replica not tried yet for this client gets what waits, as for a refused connect.
            self.drop_socket(conn.upstream)
            conn.upstream = None
            if not self.connect_upstream(conn):
                self.close_connection(conn)
            return
        if not self.retry_elsewhere(conn) and not self.switch_if_idle(conn):
            self.close_connection(conn)

    def retry_elsewhere(self, conn: Connection) -> bool:
        """The replica closed or reset before answering: replay to another READY replica.

        Returns False when the request cannot be retried (already answered, too large, or
        no other replica); the caller then closes the client connection.
        """
        if conn.answered or len(conn.replay) > REPLAY_LIMIT or conn.upstream is None:
            return False
        if conn.replay.startswith(NON_IDEMPOTENT_METHODS):
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

    def switch_if_idle(self, conn: Connection) -> bool:
        """The replica closed a keep-alive connection between responses (or died then): keep
        the client's connection and send its next request to another READY replica, as a
        proxy with its own upstream connections does. False when that is not certain, or
        when the client has finished and nothing of it waits (then the close is passed on)."""
        dead = conn.replica
        if not conn.answered or not conn.responses.idle or dead is None:
            return False
        if conn.client_eof and not conn.to_upstream:
            return False
        if not [r for r in conn.runtime.ready_replicas() if r.index != dead.index]:
            return False
        if conn.upstream is not None:
            self.drop_socket(conn.upstream)
        conn.upstream = None
        conn.tried = {dead.index}
        conn.replay = bytearray()
        conn.responses = ResponseTracker()
        conn.upstream_eof = False
        conn.upstream_shut = False
        if not self.connect_upstream(conn):
            self.close_connection(conn)
        return True

    @staticmethod
    def flush(sock: socket.socket, buffer: bytearray) -> None:
        while buffer:
            try:
                sent = sock.send(buffer)
            except (BlockingIOError, InterruptedError):
                return
            del buffer[:sent]

    def propagate_shutdowns(self, conn: Connection) -> None:
        client_done = conn.client_eof and not conn.to_upstream
        upstream_done = conn.upstream_eof and not conn.to_client
        if client_done and upstream_done:
            self.close_connection(conn)  # close sends what shutdown would have
            return
        if conn.connecting:
            return
        if client_done and not conn.upstream_shut:
            conn.upstream_shut = True
            if conn.upstream is not None:
                with contextlib.suppress(OSError):
                    conn.upstream.shutdown(socket.SHUT_WR)
        if upstream_done and not conn.client_shut:
            conn.client_shut = True
            with contextlib.suppress(OSError):
                conn.client.shutdown(socket.SHUT_WR)

    # -- selector -----------------------------------------------------------------------

    def update_interest(self, conn: Connection) -> None:
        client_events = 0
        if not conn.client_eof and len(conn.to_upstream) < PROXY_BUFFER_LIMIT:
            client_events = READ
        if conn.to_client:
            client_events |= WRITE
        interest = self.interest
        if interest.get(conn.client.fileno(), 0) != client_events:
            self.set_interest(conn.client, client_events, ("conn", conn))
        upstream = conn.upstream
        conn.steady = False
        if upstream is None:
            return
        upstream_events = 0
        if not conn.upstream_eof and len(conn.to_client) < PROXY_BUFFER_LIMIT:
            upstream_events = READ
        if conn.to_upstream or (conn.connecting and conn.client_eof):
            upstream_events |= WRITE  # to send, or to learn it is established (to shut it)
        if interest.get(upstream.fileno(), 0) != upstream_events:
            self.set_interest(upstream, upstream_events, ("conn", conn))
        conn.steady = client_events == upstream_events == READ

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
