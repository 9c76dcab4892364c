"""Where one HTTP/1.x response from a replica ends, so the load balancer knows when a
keep-alive connection is idle (every response complete) rather than mid-answer.

Only what is certain counts: a response framed by ``Content-Length`` (or a 204/304, which has
no body), and whether the replica said it closes after it (``Connection: close``, or an
HTTP/1.0 response without ``Connection: keep-alive``). Anything else (chunked,
close-delimited, a 1xx, an unparsable or unusual head, the answer to a HEAD whose body never
comes) leaves the connection "not known idle" for good, and the load balancer then treats a
close from the replica as before: it closes the client too.
A head is unusual when a line ends in a bare CR or LF, a line starts with white space
(obs-fold), white space stands between a field name and its colon, or two Content-Length
values differ (RFC 9112 5.1, 5.2, 6.3).

Every answer byte passes through :meth:`ResponseTracker.feed`, so it works on whole chunks:
a body is skipped by counting, a head is parsed with a few regular-expression searches in C.
A leaf module: standard library only.
"""

from __future__ import annotations

import re

HEAD_LIMIT = 16 * 1024
STATUS = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: |$)")
FIELD = re.compile(rb"\r\n(content-length|transfer-encoding|connection):[ \t]*([^\r\n]*)")
# The three fields with white space before the colon, or a folded line: not certain.
ODD = re.compile(rb"\r\n[ \t]|\r\n(?:content-length|transfer-encoding|connection)[ \t]+:")


class ResponseTracker:
    """Feed it every byte a replica sends on one connection, in order."""

    __slots__ = ("head", "remaining", "known", "closing")

    def __init__(self) -> None:
        self.head = b""  # the start of a head whose end has not come yet
        self.remaining = 0  # body bytes still due for the current response
        self.known = True  # False once a response's framing could not be followed
        self.closing = False  # a response said "Connection: close"

    @property
    def idle(self) -> bool:
        """Every response so far is complete and the replica did not announce a close."""
        return self.known and not self.closing and self.remaining == 0 and not self.head

    @property
    def ending(self) -> bool:
        """Every response so far is complete and the replica said it closes after the last."""
        return self.known and self.closing and self.remaining == 0 and not self.head

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not self.known:
            return
        size = len(data)
        if self.remaining >= size:
            self.remaining -= size
            return
        buf = bytes(data[self.remaining :])
        self.remaining = 0
        if self.head:
            buf = self.head + buf
            self.head = b""
        pos, size = 0, len(buf)
        while pos < size:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                self.head = buf[pos:]
                self.known = size - pos <= HEAD_LIMIT
                return
            length = self.body_length(buf[pos:end])
            if length is None:
                self.known = False
                return
            pos = end + 4 + length
        self.remaining = pos - size

    def body_length(self, head: bytes) -> int | None:
        """The body length a response head announces; None when it is not certain."""
        parsed = PARSED.get(head)
        if parsed is None:
            parsed = parse_head(head)
            if len(head) <= PARSED_HEAD_LIMIT:
                if len(PARSED) >= PARSED_LIMIT:
                    PARSED.clear()
                PARSED[head] = parsed
        length, closes = parsed
        if closes:
            self.closing = True
        return length


# A replica sends the same few heads again and again (nginx's differ in Date, once a
# second): each is parsed once.
PARSED: dict[bytes, tuple[int | None, bool]] = {}
PARSED_LIMIT = 256
PARSED_HEAD_LIMIT = 2048  # larger heads (big cookies) are parsed each time: at most 512 KiB


def parse_head(head: bytes) -> tuple[int | None, bool]:
    """(body length or None when not certain, whether the replica closes after it)."""
    status = STATUS.match(head)
    if status is None:
        return None, False
    code = int(status.group(2))
    if code < 200:
        return None, False  # an interim response: the final one follows
    keep_alive = status.group(1) != b"0"  # HTTP/1.0 closes unless it says keep-alive
    closes = False
    lower = head.lower()
    if lower.count(b"\r") != lower.count(b"\n") or lower.count(b"\r\n") != lower.count(b"\n"):
        return None, False  # a bare CR or LF
    if ODD.search(lower):
        return None, False
    length: int | None = 0 if code in (204, 304) else None
    lengths = set()
    for name, value in FIELD.findall(lower):
        value = value.rstrip(b" \t")
        if name == b"transfer-encoding":
            return None, False
        if name == b"connection":
            if b"close" in value:
                closes = True
            elif b"keep-alive" in value:
                keep_alive = True
        elif code not in (204, 304):
            if not value.isdigit():
                return None, False
            lengths.add(int(value))
    if len(lengths) > 1:
        return None, False
    if lengths:
        length = lengths.pop()
    return length, closes or not keep_alive
