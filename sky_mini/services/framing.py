"""Where one HTTP/1.x response from a replica ends, so the load balancer knows when a
keep-alive connection is idle (every response complete) rather than mid-answer.

Only what is certain counts: a response framed by ``Content-Length`` (or a 204/304, which has
no body). Anything else (chunked, close-delimited, a 1xx, an unparsable head, the answer to a
HEAD whose body never comes) leaves the connection "not known idle" for good, and the load
balancer then treats a close from the replica as before: it closes the client too.
A leaf module: standard library only.
"""

from __future__ import annotations

HEAD_LIMIT = 16 * 1024


class ResponseTracker:
    """Feed it every byte a replica sends on one connection, in order."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.remaining = 0  # body bytes still due for the current response
        self.known = True  # False once a response's framing could not be followed
        self.closing = False  # a response said "Connection: close"

    @property
    def idle(self) -> bool:
        """Every response so far is complete and the replica did not announce a close."""
        return self.known and not self.closing and self.remaining == 0 and not self.head

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(bytes(data))
        while self.known and view:
            if self.remaining:
                taken = min(self.remaining, len(view))
                self.remaining -= taken
                view = view[taken:]
                continue
            self.head += view
            view = memoryview(b"")
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                self.known = len(self.head) <= HEAD_LIMIT
                return
            head, rest = bytes(self.head[:end]), bytes(self.head[end + 4 :])
            self.head = bytearray()
            length = self.body_length(head)
            if length is None:
                self.known = False
                return
            self.remaining = length
            view = memoryview(rest)

    def body_length(self, head: bytes) -> int | None:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
            return None
        code = int(status[1])
        if code < 200:
            return None  # an interim response: the final one follows
        length: int | None = 0 if code in (204, 304) else None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"transfer-encoding":
                return None
            if name == b"connection" and b"close" in value:
                self.closing = True
            if name == b"content-length" and code not in (204, 304):
                if not value.isdigit():
                    return None
                length = int(value)
        return length
