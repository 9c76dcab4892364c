"""The server's side of the http component (``serve --http`` / config ``http.listen``).

``HttpSupervisor`` forks ``sky-mini: http`` through ``tied.fork_tied`` at start, shows it in
``api status`` (with the URL it listens on), restarts it when it dies (after a backoff when
it keeps dying, e.g. the port is taken), and closes its command pipe at shutdown: EOF tells
it to exit, and ``PR_SET_PDEATHSIG`` ends it if the server is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
from collections.abc import Callable
from typing import Any

from sky_mini import procs
from sky_mini.server.channel import LineReader

log = logging.getLogger("sky_mini.server")

COMPONENT_NAME = "http"
BACKOFF_MAX_SECONDS = 60.0
STABLE_SECONDS = 60.0
"""A component that ran this long before dying restarts at once (the backoff resets)."""

Spawner = Callable[[str, str, frozenset[str]], tuple[int, int, int]]


def spawn_http(home: str, listen: str, disabled: frozenset[str]) -> tuple[int, int, int]:
    import functools

    from sky_mini.http.component import HttpConfig, http_main
    from sky_mini.server.tied import fork_tied

    config = HttpConfig(home=home, listen=listen, disabled=disabled)
    # A partial of a module-level function: picklable, should fork_tied ever spawn instead.
    return fork_tied("http", disabled, functools.partial(http_main, config))


class HttpSupervisor:
    def __init__(
        self,
        home: str,
        listen: str,
        disabled: frozenset[str],
        *,
        selector: selectors.BaseSelector,
        spawn: Spawner = spawn_http,
    ) -> None:
        self.home = home
        self.listen = listen
        self.disabled = disabled
        self.selector = selector
        self.spawn = spawn
        self.pid = 0
        self.create_time: float | None = None
        self.cmd_w = -1
        self.events: LineReader | None = None
        self.alive = False
        self.started_at: float | None = None
        self.state = "stopped"
        self.url: str | None = None
        self.last_error: str | None = None
        self.restarts = 0
        self.failures = 0
        self.next_start_at: float | None = 0.0
        self.shutting_down = False

    def maintain(self, now: float) -> bool:
        """One tick: read its events, (re)start it when due. True when the status changed."""
        changed = self.read_events()
        if self.alive or self.shutting_down or self.next_start_at is None:
            return changed
        if now >= self.next_start_at:
            self.start(now)
            return True
        return changed

    def start(self, now: float) -> None:
        pid, cmd_w, evt_r = self.spawn(self.home, self.listen, self.disabled)
        if self.started_at is not None:
            self.restarts += 1
        self.pid, self.cmd_w, self.alive = pid, cmd_w, True
        self.create_time = procs.process_create_time(pid)
        self.events = LineReader(evt_r)
        self.started_at = now
        self.state = "starting"
        self.next_start_at = None
        with contextlib.suppress(KeyError):
            self.selector.unregister(evt_r)
        self.selector.register(evt_r, selectors.EVENT_READ, COMPONENT_NAME)
        log.info("forked the http component (pid %d) for %s", pid, self.listen)

    def read_events(self) -> bool:
        if self.events is None:
            return False
        changed = False
        for message in self.events.read_messages():
            if message.get("event") == "listening":
                self.url = str(message.get("url"))
                self.state = "running"
                self.last_error = None
                log.info("http: dashboard and /metrics at %s", self.url)
                changed = True
            elif message.get("event") == "error":
                self.last_error = str(message.get("message"))
                log.warning("http: %s", self.last_error)
                changed = True
        if self.events.eof:
            self.close_pipes()
        return changed

    def close_pipes(self) -> None:
        if self.events is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.events.fd)
            with contextlib.suppress(OSError):
                os.close(self.events.fd)
            self.events = None
        if self.cmd_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self.cmd_w)
            self.cmd_w = -1

    def child_exited(self, pid: int, status: int, now: float) -> None:
        if not self.alive or pid != self.pid:
            return
        self.read_events()
        self.close_pipes()
        self.alive = False
        self.url = None
        if self.shutting_down:
            self.state = "stopped"
            return
        ran = now - (self.started_at or now)
        self.failures = 0 if ran >= STABLE_SECONDS else self.failures + 1
        delay = 0.0 if self.failures <= 1 else min(BACKOFF_MAX_SECONDS, 2.0 ** (self.failures - 1))
        self.next_start_at = now + delay
        self.state = "backoff" if delay else "dead"
        from sky_mini.server.backends.local.pool import describe_returncode

        log.warning(
            "http component (pid %d) exited (%s)%s; restarting it%s",
            pid,
            describe_returncode(procs.returncode_from_status(status)),
            f": {self.last_error}" if self.last_error else "",
            f" in {delay:g}s" if delay else "",
        )

    def components(self) -> list[dict[str, Any]]:
        row: dict[str, Any] = {
            "name": COMPONENT_NAME,
            "kind": COMPONENT_NAME,
            "pid": self.pid if self.alive else None,
            "create_time": self.create_time if self.alive else None,
            "state": self.state,
            "job_id": None,
            "started_at": self.started_at if self.alive else None,
            "restarts": self.restarts,
            "should_run": not self.shutting_down,
            "listen": self.listen,
            "url": self.url,
        }
        if self.last_error:
            row["error"] = self.last_error
        return [row]

    def shutdown(self) -> None:
        """EOF on its command pipe: it closes its sockets and exits."""
        self.shutting_down = True
        self.close_pipes()
        if self.alive and procs.is_same_process(self.pid, self.create_time):
            procs.signal_pid(self.pid, signal.SIGTERM)

    def force_kill(self) -> None:
        """Shutdown took too long (a handler stuck on a slow filesystem?): SIGKILL it."""
        if self.alive and procs.is_same_process(self.pid, self.create_time):
            log.warning("http component (pid %d) did not stop in time: killing it", self.pid)
            procs.signal_pid(self.pid, signal.SIGKILL)

    def is_stopped(self) -> bool:
        return not self.alive
