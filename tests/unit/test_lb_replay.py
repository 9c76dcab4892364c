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
    selector = selectors.DefaultSelector()
    lb = LoadBalancer(selector)
    lb.bind(rt, 0.0)  # type: ignore[arg-type]
    assert rt.lb_port
    stop = threading.Event()

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
