"""The http component's loop: one thread, non-blocking sockets, a selector, hard bounds.

Slow-loris safe by construction: no read or write ever blocks, each connection has one
deadline for its whole exchange (``REQUEST_SECONDS``), a request's head is capped at
``MAX_REQUEST_BYTES`` and carries no body, one request per connection, and at most
``MAX_CONNECTIONS`` at once (a new one evicts the oldest still sending its request, so idle
sockets cannot lock real users out). Nothing here talks to the server's loop: a client, however
slow or hostile, can only ever cost this process its own time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from sky_mini.http.api import Api, Response, error
from sky_mini.http.auth import COOKIE_NAME, Gate, ensure_token, same_token
from sky_mini.http.metrics import CONTENT_TYPE as METRICS_TYPE
from sky_mini.http.metrics import collect
from sky_mini.http.page import Assets
from sky_mini.http.reader import JobIndex
from sky_mini.paths import Paths

MAX_CONNECTIONS = 64
MAX_REQUEST_BYTES = 8192
MAX_TARGET_CHARS = 2048
REQUEST_SECONDS = 10.0
METRICS_FILE_SECONDS = 15.0
METRICS_FILE = "metrics.prom"
LISTEN_BACKLOG = 128
RECV_BYTES = 4096
REQUEST_SECONDS_ENV = "SKY_MINI_HTTP_REQUEST_SECONDS"  # test-only: a shorter deadline
STATUS_TEXT = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Connection": "close",
}


def request_seconds() -> float:
    with contextlib.suppress(ValueError):
        return max(0.1, float(os.environ.get(REQUEST_SECONDS_ENV) or REQUEST_SECONDS))
    return REQUEST_SECONDS


@dataclass
class Connection:
    sock: socket.socket
    deadline: float
    accepted_at: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytes = b""
    sent: int = 0
    writing: bool = False


def encode_response(response: Response, *, head_only: bool = False) -> bytes:
    reason = STATUS_TEXT.get(response.status, "Unknown")
    headers = {
        **COMMON_HEADERS,
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        **response.headers,
    }
    head = f"HTTP/1.1 {response.status} {reason}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return (head + "\r\n").encode("latin-1") + (b"" if head_only else response.body)


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """Answers requests on ``listener`` until :meth:`serve`'s ``should_stop`` says so."""

    def __init__(
        self, paths: Paths, listener: socket.socket, gate: Gate, disabled: frozenset[str]
    ) -> None:
        self.paths = paths
        self.listener = listener
        self.gate = gate
        self.deadlines = "http_deadline" not in disabled  # test-only negative control
        self.timeout = request_seconds()
        self.index = JobIndex(paths)
        self.api = Api(paths, self.index)
        self.assets = Assets()
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, None)
        self.connections: dict[int, Connection] = {}
        self.next_metrics_write = 0.0

    # -- the loop ------------------------------------------------------------------------

    def poll_once(self, extra_timeout: float) -> list[int]:
        """One select: serve what is ready; return the non-socket fds that were ready."""
        now = time.monotonic()
        timeout = min(extra_timeout, max(0.0, self.next_metrics_write - now))
        if self.deadlines and self.connections:
            soonest = min(c.deadline for c in self.connections.values())
            timeout = min(timeout, max(0.0, soonest - now))
        try:
            ready = self.selector.select(timeout)
        except InterruptedError:
            ready = []
        others = []
        for key, events in ready:
            if key.fileobj is self.listener:
                self.accept_all()
            elif key.data == "fd":
                others.append(key.fd)
            else:
                conn = self.connections.get(key.fd)
                if conn is None:
                    continue
                if events & selectors.EVENT_READ and not conn.writing:
                    self.read_from(conn)
                elif events & selectors.EVENT_WRITE and conn.writing:
                    self.write_to(conn)
        self.expire(time.monotonic())
        if time.monotonic() >= self.next_metrics_write:
            self.write_metrics_file()
        return others

    def watch_fd(self, fd: int) -> None:
        self.selector.register(fd, selectors.EVENT_READ, "fd")

    def accept_all(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.evict_oldest_reader()  # make room; the kernel keeps the backlog
                return
            sock.setblocking(False)
            if len(self.connections) >= MAX_CONNECTIONS and not self.evict_oldest_reader():
                sock.close()
                continue
            now = time.monotonic()
            conn = Connection(sock=sock, deadline=now + self.timeout, accepted_at=now)
            self.connections[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, "conn")

    def evict_oldest_reader(self) -> bool:
        readers = [c for c in self.connections.values() if not c.writing]
        if not readers:
            return False
        self.close(min(readers, key=lambda c: c.accepted_at))
        return True

    def read_from(self, conn: Connection) -> None:
        try:
            chunk = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        if not chunk:
            self.close(conn)
            return
        conn.inbuf += chunk
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbuf) > MAX_REQUEST_BYTES:
                self.respond(conn, error(431, "request head over 8 KiB"), head_only=False)
            return
        if end > MAX_REQUEST_BYTES:
            self.respond(conn, error(431, "request head over 8 KiB"), head_only=False)
            return
        head = bytes(conn.inbuf[:end]).decode("latin-1")
        method = head.split(" ", 1)[0]
        self.respond(conn, self.answer(head), head_only=method == "HEAD")

    def respond(self, conn: Connection, response: Response, *, head_only: bool) -> None:
        conn.outbuf = encode_response(response, head_only=head_only)
        conn.writing = True
        conn.inbuf.clear()
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, "conn")
        self.write_to(conn)

    def write_to(self, conn: Connection) -> None:
        try:
            while conn.sent < len(conn.outbuf):
                sent = conn.sock.send(conn.outbuf[conn.sent : conn.sent + 65536])
                if sent <= 0:
                    return
                conn.sent += sent
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        self.close(conn)

    def expire(self, now: float) -> None:
        if not self.deadlines:
            return
        for conn in [c for c in self.connections.values() if c.deadline <= now]:
            self.close(conn)

    def close(self, conn: Connection) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn.sock)
            self.connections.pop(fd, None)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def close_all(self) -> None:
        for conn in list(self.connections.values()):
            self.close(conn)
        with contextlib.suppress(OSError):
            self.listener.close()
        self.selector.close()

    # -- requests ------------------------------------------------------------------------

    def answer(self, head: str) -> Response:
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return error(400, "not an HTTP/1.x request line")
        method, target, _ = parts
        if len(target) > MAX_TARGET_CHARS:
            return error(414, f"request target over {MAX_TARGET_CHARS} characters")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return error(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return Response(405, b'{"error":"read-only: use GET"}', headers={"Allow": "GET, HEAD"})
        if headers.get("transfer-encoding") or headers.get("content-length", "0") != "0":
            return error(413, "requests carry no body here")
        try:
            split = urlsplit(target)
            query = parse_qs(split.query, keep_blank_values=True, max_num_fields=20)
        except ValueError:
            return error(400, "malformed query string")
        path = split.path or "/"
        try:
            return self.dispatch(path, query, headers)
        except Exception:  # noqa: BLE001 - one bad request must not end the component
            traceback.print_exc(file=sys.stderr)
            return error(500, "internal error; see the server log ('sky-mini api logs')")

    def dispatch(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> Response:
        login = query.get("token")
        if path == "/" and login and self.gate.needs_token:
            if len(login) == 1 and same_token(login[0], self.gate.token or ""):
                cookie = f"{COOKIE_NAME}={login[0]}; HttpOnly; SameSite=Strict; Path=/"
                return Response(
                    303, b"", "text/plain", headers={"Location": "/", "Set-Cookie": cookie}
                )
            return unauthorized()
        verdict = self.gate.check(
            headers.get("host"), headers.get("authorization"), headers.get("cookie")
        )
        if verdict == "bad_host":
            return error(403, "Host header does not name this listener")
        if verdict != "ok":
            return unauthorized()
        if path == "/metrics":
            text = collect(self.paths, self.index, time.time())
            return Response(200, text.encode(), METRICS_TYPE)
        if path == "/api" or path.startswith("/api/"):
            return self.api.handle(path, query)
        asset = self.assets.get(path)
        if asset is not None:
            return asset
        return error(404, f"no such page {path[:80]!r}; try / or /metrics")

    def write_metrics_file(self, *, final: bool = False) -> None:
        """``$SKY_MINI_HOME/metrics.prom`` for node_exporter's textfile collector.

        The ``final`` write, as this component stops (with the server, or killed by the
        parent-death signal), says ``sky_mini_up 0``: the file outlives us.
        """
        from sky_mini.state import atomic_write_bytes

        self.next_metrics_write = time.monotonic() + METRICS_FILE_SECONDS
        try:
            text = collect(self.paths, self.index, time.time(), server_gone=final)
            atomic_write_bytes(
                os.path.join(self.paths.home, METRICS_FILE), text.encode(), durable=False
            )
        except OSError as exc:
            print(f"sky-mini http: cannot write {METRICS_FILE}: {exc}", file=sys.stderr)


def unauthorized() -> Response:
    return Response(
        401,
        b'{"error":"unauthorized"}',
        headers={"WWW-Authenticate": 'Bearer realm="sky-mini"'},
    )


def open_server(paths: Paths, listen: str, disabled: frozenset[str]) -> tuple[HttpServer, str]:
    """Bind ``listen`` and build the server; return it and its URL. Raises OSError/ValueError."""
    from sky_mini.config import parse_listen

    host, port = parse_listen(listen)
    gate_probe = Gate(host, port, None)
    token = None
    if gate_probe.needs_token:
        token, warning = ensure_token(paths.home)
        if warning:
            print(f"sky-mini http: {warning}", file=sys.stderr)
    listener = bind_listener(host, port)
    actual = listener.getsockname()[1]
    gate = Gate(host, int(actual), token)
    shown = f"[{host}]" if ":" in host else host
    return HttpServer(paths, listener, gate, disabled), f"http://{shown}:{actual}"
