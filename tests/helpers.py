"""Test helpers: polling instead of sleeping, and a real sky-mini in a temporary home."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT = 30.0


class FakeClock:
    """An injectable clock that moves only when a test sets or advances ``now``."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_for(
    predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, message: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def same_process(pid: int, create_time: float | None) -> bool:
    import psutil

    try:
        actual = psutil.Process(pid).create_time()
    except psutil.Error:
        return False
    return create_time is not None and abs(actual - create_time) < 0.05


def has_inotify_fd(pid: int) -> bool:
    """Does the process hold an inotify descriptor (a follower or waiter that is waiting)?"""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:inotify":
                return True
    return False


def pids_holding_files_under(directory: str) -> list[int]:
    """Processes (not us) with an open file or cwd below ``directory``: a test's own tmp dir,
    so only processes the test started. Catches executors a negative control let survive,
    whose titles overwrote their environment (and with it the marker)."""
    prefix = os.path.realpath(directory) + os.sep
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            links = [os.readlink(f"/proc/{entry}/cwd")]
            links += [
                os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")
            ]
        except OSError:
            continue
        if any(link.startswith(prefix) for link in links) and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def marked_pids(home_key_prefix: str) -> list[int]:
    """PIDs carrying a SKY_MINI_MARKER for this home (only processes our tests started)."""
    wanted = f"SKY_MINI_MARKER={home_key_prefix}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                items = handle.read().split(b"\0")
            if any(item.startswith(wanted) for item in items) and pid_alive(int(entry)):
                found.append(int(entry))
        except OSError:
            continue
    return found


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class SkyMini:
    """A sky-mini home for one test: run the real CLI, start real servers, clean up."""

    home: str
    extra_env: dict[str, str] = field(default_factory=dict)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SKY_MINI_DISABLE", None)
        env.update({"SKY_MINI_HOME": self.home, "SKY_MINI_KILL_GRACE_SECONDS": "3"})
        env.update(self.extra_env)
        return env

    @property
    def key(self) -> str:
        import hashlib

        return hashlib.sha256(self.home.encode()).hexdigest()[:10]

    def run(
        self, *args: str, timeout: float = 60.0, input: str | None = None, check: bool = False
    ) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "sky_mini", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"sky-mini {' '.join(args)} exited {proc.returncode}: {result}")
        return result

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "sky_mini", *args],
            env=self.env,
            stdout=kwargs.pop("stdout", subprocess.PIPE),
            stderr=kwargs.pop("stderr", subprocess.PIPE),
            **kwargs,
        )

    def serve_foreground(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(os.path.join(os.path.dirname(self.home), f"fg-{len(self.servers)}.log"), "ab")  # noqa: SIM115
        proc = self.popen("serve", "--foreground", *args, stdout=log, stderr=log)
        self.servers.append(proc)
        wait_for(lambda: self.status_ok(proc.pid), message="server healthy")
        return proc

    def status(self) -> dict[str, Any] | None:
        path = os.path.join(self.home, "server", "status.json")
        try:
            with open(path) as handle:
                data: dict[str, Any] = json.load(handle)
                return data
        except (OSError, ValueError):
            return None

    def status_ok(self, pid: int | None = None) -> bool:
        status = self.status()
        return bool(
            status
            and status.get("state") == "running"
            and (pid is None or status.get("pid") == pid)
        )

    def server_pid(self) -> int | None:
        """The running server's PID, only if it is really the process the status names."""
        status = self.status()
        if not status or status.get("state") != "running":
            return None
        pid = int(status["pid"])
        if pid <= 1 or not same_process(pid, status.get("create_time")):
            return None  # e.g. a PID from inside a PID namespace: not ours to signal
        return pid

    def job(self, job_id: int) -> dict[str, Any]:
        with open(os.path.join(self.home, "jobs", f"{job_id}.json")) as handle:
            data: dict[str, Any] = json.load(handle)
            return data

    def wait_job(
        self, job_id: int, statuses: tuple[str, ...], timeout: float = 30
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            try:
                record = self.job(job_id)
            except (OSError, ValueError):
                return None
            return record if record["status"] in statuses else None

        result: dict[str, Any] = wait_for(check, timeout, f"job {job_id} in {statuses}")
        return result

    def cleanup(self) -> None:
        """Stop every server this test started (and auto-started ones), then sweep leftovers."""
        pid = self.server_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not pid_alive(pid), 20, "server exit")
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in self.servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for leftover in marked_pids(self.key + ":") + pids_holding_files_under(
            os.path.dirname(self.home)
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
        from sky_mini.cgroups import detect_capabilities, discard_base

        discard_base(detect_capabilities(), f"sky-mini-{self.key}")
