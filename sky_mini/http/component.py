"""``sky-mini: http`` as a tied child: bind, tell the server the URL, serve until told to stop.

It stops when the command pipe reaches EOF (the server is gone or shutting down), on an
``exit`` command, or on SIGTERM (also its parent-death signal). ``SKY_MINI_DISABLE=pipe``
(with ``pdeathsig``) is the test-only negative control that lets it outlive the server.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from sky_mini.paths import Paths

EXIT_CANNOT_LISTEN = 3


@dataclass(frozen=True)
class HttpConfig:
    home: str
    listen: str
    disabled: frozenset[str]


def http_main(config: HttpConfig, cmd_fd: int, evt_fd: int) -> int:
    from sky_mini.http.server import open_server
    from sky_mini.server.channel import LineReader, send_message
    from sky_mini.server.tied import LoopSignals

    signals = LoopSignals()
    signals.install()
    try:
        server, url = open_server(Paths(config.home), config.listen, config.disabled)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        message = f"cannot listen on {config.listen}: {why}"
        send_message(evt_fd, {"event": "error", "message": message})
        return EXIT_CANNOT_LISTEN
    send_message(evt_fd, {"event": "listening", "url": url, "pid": os.getpid()})
    commands = LineReader(cmd_fd)
    server.watch_fd(cmd_fd)
    server.watch_fd(signals.read_fd)
    try:
        while not signals.term_received:
            ready = server.poll_once(1.0)
            if signals.read_fd in ready:
                signals.drain()
            if cmd_fd in ready:
                messages = commands.read_messages()
                if any(m.get("op") == "exit" for m in messages):
                    break
                if commands.eof:
                    if "pipe" not in config.disabled:
                        break
                    server.selector.unregister(cmd_fd)  # test-only: ignore the server's death
    finally:
        with contextlib.suppress(Exception):  # sky_mini_up 0, not a stale 1, once we are gone
            server.write_metrics_file(final=True)
        server.close_all()
        signals.close()
        with contextlib.suppress(OSError):
            sys.stderr.flush()
    return 0
