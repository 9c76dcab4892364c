"""JSON-lines messages over pipes between the server and its executors.

Each message is one line under ``PIPE_BUF`` bytes, so a write is atomic. The read side is
non-blocking and buffers partial lines; ``eof`` becomes True when the writer is gone — for an
executor, that is how it learns the server died.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

READ_CHUNK = 65536


class LineReader:
    """Buffers a non-blocking read end and yields whole JSON messages."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.eof = False
        self._buffer = b""
        os.set_blocking(fd, False)

    def read_messages(self) -> list[dict[str, Any]]:
        while True:
            try:
                chunk = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
        messages: list[dict[str, Any]] = []
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                messages.append(message)
        return messages


def send_message(fd: int, message: dict[str, Any]) -> bool:
    """Write one message; False if the reader is gone (EPIPE) or the fd is closed."""
    payload = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    try:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.EBADF):
            return False
        raise
