"""The load balancer replays an unanswered idempotent request, also on a keep-alive connection."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sky_mini.services.lb import LoadBalancer
from sky_mini.services.model import Replica, ReplicaState, RestartPolicy
from tests.helpers import wait_for

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%s"


class Runtime:
    """What LoadBalancer needs of a ServiceRuntime."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.name = "web"
        self.replicas = replicas
        self.listener: socket.socket | None = None
        self.lb_port: int | None = None
        self.lb_error: str | None = None
        self.next_bind_at = 0.0
        self.rr = 0
        self.dirty = False
        self.connections: set[Any] = set()

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.state is ReplicaState.READY and r.port]


def serve(listener: socket.socket, answers: int, name: bytes) -> None:
    """Answer ``answers`` requests per connection, then close the next one unanswered."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            for _ in range(answers):
                if not conn.recv(4096):
                    break
                conn.sendall(RESPONSE % name)
            else:
                conn.recv(4096)  # the request it dies on: read, never answered


def replica(index: int, answers: int, name: bytes) -> tuple[Replica, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener, answers, name), daemon=True).start()
    r = Replica(index=index, policy=RestartPolicy(), state=ReplicaState.READY)
    r.port = listener.getsockname()[1]
    return r, listener


@pytest.fixture
def balancer() -> Iterator[tuple[Runtime, int, threading.Event]]:
    dying, dying_listener = replica(1, 1, b"A")  # answers once per connection, then "dies"
    healthy, healthy_listener = replica(2, 1000, b"B")
    rt = Runtime([dying, healthy])
    stop = threading.Event()
    lb, thread = run_balancer(rt, stop)
    assert rt.lb_port
    yield rt, rt.lb_port, stop
    stop.set()
    thread.join(5)
    lb.close(rt)  # type: ignore[arg-type]
    for listener in (dying_listener, healthy_listener):
        listener.close()


def exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while len(data) < len(RESPONSE % b"x"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_keep_alive_request_the_replica_never_answered_goes_to_another(
    balancer: tuple[Runtime, int, threading.Event],
) -> None:
    _, port, _ = balancer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        assert exchange(client, get) == RESPONSE % b"A"  # round-robin starts at replica 1
        assert exchange(client, get) == RESPONSE % b"B"  # replica 1 died on it: replayed


def test_a_post_is_never_replayed(balancer: tuple[Runtime, int, threading.Event]) -> None:
    """Negative control: the same connection with a POST sees the close (no duplicate POST)."""
    _, port, _ = balancer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert exchange(client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == RESPONSE % b"A"
        post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        assert exchange(client, post) == b""


def serve_then_close(listener: socket.socket, response: bytes) -> None:
    """Answer one request per connection, then close it at once (idle keep-alive close)."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            if conn.recv(4096):
                conn.sendall(response)


@pytest.fixture
def closing_balancer(request: pytest.FixtureRequest) -> Iterator[tuple[int, Runtime]]:
    response: bytes = request.param
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve_then_close, args=(listener, response), daemon=True).start()
    first = Replica(index=1, policy=RestartPolicy(), state=ReplicaState.READY)
    first.port = listener.getsockname()[1]
    healthy, healthy_listener = replica(2, 1000, b"B")
    rt = Runtime([first, healthy])
    stop = threading.Event()
    lb, thread = run_balancer(rt, stop)
    assert rt.lb_port
    yield rt.lb_port, rt
    stop.set()
    thread.join(5)
    lb.close(rt)  # type: ignore[arg-type]
    listener.close()
    healthy_listener.close()


@pytest.mark.parametrize("closing_balancer", [RESPONSE % b"A"], indirect=True)
def test_an_idle_keep_alive_connection_the_replica_closed_stays_open(
    closing_balancer: tuple[int, Runtime],
) -> None:
    port, rt = closing_balancer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        assert exchange(client, get) == RESPONSE % b"A"

        def moved_on() -> bool:  # the LB saw replica 1 close and took replica 2 instead
            return any(c.replica is not None and c.replica.index == 2 for c in rt.connections)

        wait_for(moved_on, message="the load balancer to notice the idle close")
        assert exchange(client, get) == RESPONSE % b"B"


CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nA-body-to-the-close"


@pytest.mark.parametrize("closing_balancer", [CLOSE_DELIMITED], indirect=True)
def test_a_close_delimited_answer_still_ends_with_the_close(
    closing_balancer: tuple[int, Runtime],
) -> None:
    """Negative control: where the close is the end of the answer, the client gets it."""
    with socket.create_connection(("127.0.0.1", closing_balancer[0]), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := client.recv(4096):  # would block until the timeout if held open
            data += chunk
        assert data == CLOSE_DELIMITED


def test_response_tracker_follows_content_length_and_gives_up_on_the_rest() -> None:
    from sky_mini.services.framing import ResponseTracker

    tracker = ResponseTracker()
    tracker.feed(b"HTTP/1.1 200 OK\r\nContent-Le")
    assert not tracker.idle
    tracker.feed(b"ngth: 3\r\n\r\nab")
    assert not tracker.idle
    tracker.feed(b"cHTTP/1.1 204 No Content\r\n\r\n")
    assert tracker.idle
    for head in (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nbody",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"garbage\r\n\r\n",
    ):
        other = ResponseTracker()
        other.feed(head)
        assert not other.idle, head


def test_a_client_that_closes_after_its_answer_ends_both_connections(
    balancer: tuple[Runtime, int, threading.Event],
) -> None:
    """The replica closes the idle connection once the client has: the LB must not take that
    close as a cue to reconnect (it did, back and forth between replicas, for good)."""
    rt, port, _ = balancer
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert exchange(client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == RESPONSE % b"A"
        client.shutdown(socket.SHUT_WR)
        assert client.recv(4096) == b""  # the LB passed the replica's close on
    wait_for(lambda: not rt.connections, message="the load balancer to drop the connection")


def test_response_tracker_reads_whole_chunks_and_doubts_unusual_heads() -> None:
    from sky_mini.services.framing import ResponseTracker

    two = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length:1\r\n\r\n"
    )
    tracker = ResponseTracker()
    tracker.feed(two)  # two responses in one chunk, the second body still due
    assert not tracker.idle
    tracker.feed(b"k")
    assert tracker.idle
    closing = ResponseTracker()
    closing.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert not closing.idle  # complete, but the replica announced its close
    old = ResponseTracker()  # HTTP/1.0 closes after the response unless it says keep-alive
    old.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert not old.idle
    old = ResponseTracker()
    old.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\nx")
    assert old.idle
    for head in (
        b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",  # white space before the colon
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: y\nContent-Length: 0\r\n\r\n",  # a bare LF
        b"HTTP/1.1 200 OK\r\nX: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
    ):
        other = ResponseTracker()
        other.feed(head)
        assert not other.idle, head
    same = ResponseTracker()  # the negative control for the list above: a plain head
    same.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 0\r\nX: y\r\n\r\n")
    assert same.idle


def run_balancer(rt: Runtime, stop: threading.Event) -> tuple[LoadBalancer, threading.Thread]:
    selector = selectors.DefaultSelector()
    lb = LoadBalancer(selector)
    lb.bind(rt, 0.0)  # type: ignore[arg-type]

    def loop() -> None:
        while not stop.is_set():
            for key, mask in selector.select(0.02):
                kind, data = key.data
                if kind == "lb":
                    lb.accept(data)
                else:
                    lb.handle_connection(data, key.fileobj, mask)  # type: ignore[arg-type]

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return lb, thread


@pytest.mark.parametrize("with_healthy", [True, False])
def test_a_replica_that_refuses_the_connection_is_skipped(with_healthy: bool) -> None:
    """A READY replica whose port refuses (it died since its last probe): the request goes to
    the next replica; with none left the client sees its connection end, not a hang."""
    gone = socket.create_server(("127.0.0.1", 0))
    dead = Replica(index=1, policy=RestartPolicy(), state=ReplicaState.READY)
    dead.port = gone.getsockname()[1]
    gone.close()  # nothing listens there now: connect is refused
    replicas = [dead]
    if with_healthy:
        healthy, healthy_listener = replica(2, 1000, b"B")
        replicas.append(healthy)
    rt = Runtime(replicas)
    stop = threading.Event()
    lb, thread = run_balancer(rt, stop)
    try:
        assert rt.lb_port
        with socket.create_connection(("127.0.0.1", rt.lb_port), timeout=10) as client:
            try:
                answer = exchange(client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            except ConnectionResetError:
                answer = b""
        assert answer == (RESPONSE % b"B" if with_healthy else b"")
    finally:
        stop.set()
        thread.join(5)
        lb.close(rt)  # type: ignore[arg-type]
        if with_healthy:
            healthy_listener.close()


def serve_bulk(listener: socket.socket, body: bytes) -> None:
    """Read a request with a body of ``len(body)`` bytes, check it, answer with ``body``."""
    conn, _ = listener.accept()
    with conn:
        received = bytearray()
        while not received.endswith(body[-16:]) or len(received) < len(body):
            chunk = conn.recv(1 << 16)
            if not chunk:
                return
            received += chunk
        ok = received.split(b"\r\n\r\n", 1)[1] == body
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        conn.sendall(b"" if ok else b"mismatch")


def test_large_bodies_pass_whole_both_ways_through_full_buffers() -> None:
    """8 MB up and down: the sockets' buffers fill, so the LB keeps and resends the rest."""
    body = bytes(range(256)) * (8 * 4096)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve_bulk, args=(listener, body), daemon=True).start()
    one = Replica(index=1, policy=RestartPolicy(), state=ReplicaState.READY)
    one.port = listener.getsockname()[1]
    rt = Runtime([one])
    stop = threading.Event()
    lb, thread = run_balancer(rt, stop)
    try:
        assert rt.lb_port
        with socket.create_connection(("127.0.0.1", rt.lb_port), timeout=30) as client:
            head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            client.sendall(head + body)
            expected = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            data = bytearray()
            while len(data) < len(expected):
                chunk = client.recv(4096)  # small reads: the LB's sends come up short
                if not chunk:
                    break
                data += chunk
        assert data == expected
    finally:
        stop.set()
        thread.join(5)
        lb.close(rt)  # type: ignore[arg-type]
        listener.close()
