"""The server's start: its lock, the wake FIFO, signal handlers, and the host's limits.

``Server.prepare`` calls these before the first tick.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import sys
from typing import TYPE_CHECKING

from sky_mini import procs
from sky_mini.paths import Paths
from sky_mini.server.admission import Capacity
from sky_mini.state import acquire_flock

if TYPE_CHECKING:
    from sky_mini.server.main import Server

log = logging.getLogger("sky_mini.server")


class AlreadyRunning(Exception):
    """Another server holds this home's server lock."""


def acquire_server_lock(server: Server) -> None:
    fd = os.open(server.paths.server_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        acquire_flock(fd, server.paths.server_lock, 0)
    except OSError:
        os.close(fd)
        raise AlreadyRunning() from None
    os.set_inheritable(fd, False)
    server.lock_fd = fd
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())


def open_wake_fifo(server: Server) -> None:
    path = server.paths.wake_fifo
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        import stat

        if not stat.S_ISFIFO(st.st_mode):
            os.unlink(path)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    # Hold a writer ourselves so the reader never sees EOF between clients.
    keep_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    server.wake_fds = (read_fd, keep_fd)
    server.selector.register(read_fd, selectors.EVENT_READ, "wake")


def install_signal_handlers(server: Server) -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    server.signal_fds = (read_fd, write_fd)
    server.selector.register(read_fd, selectors.EVENT_READ, "signal")
    signal.set_wakeup_fd(write_fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, server._on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def configure_host(server: Server) -> None:
    from sky_mini.capacity import publish as publish_capacity
    from sky_mini.cgroups import detect_capabilities
    from sky_mini.resources import detect_resources, size_pool

    settings = server.settings
    detected = detect_resources(
        config_cpus=settings.cpus, config_memory_bytes=settings.memory_bytes
    )
    pool = size_pool(detected.cpus, detected.memory_bytes, server.executors_override)
    if pool.warning:
        log.warning("%s", pool.warning)
        server.warnings.append(pool.warning)
    server.capacity = Capacity(cpus=detected.cpus, memory_bytes=pool.usable_memory_bytes)
    publish_capacity(
        server.paths.server_dir,
        server.paths.config,
        detected.cpus,
        detected.memory_bytes,
        settings={"infra": settings.infra, "slurm_partition": settings.slurm_partition},
    )
    from sky_mini.server.gpus import detect_gpu_pool

    server.gpu_pool = detect_gpu_pool()
    caps = detect_capabilities(disabled="cgroup" in settings.disabled)
    for warning in caps.warnings:
        log.warning("%s", warning)
        server.warnings.append(warning)
    mechanism = settings.memory_mechanism
    if mechanism == "auto":
        mechanism = "cgroup" if caps.can_limit_memory else "watchdog"
    elif mechanism == "cgroup" and not caps.can_limit_memory:
        note = "limits.memory is 'cgroup' but no cgroup memory controller is writable; "
        note += "using the RSS watchdog"
        log.warning("%s", note)
        server.warnings.append(note)
        mechanism = "watchdog"
    server.memory_mechanism = mechanism
    server.cgroup_caps = None if "cgroup" in settings.disabled else caps
    subreaper = False
    if server.pid1:
        subreaper = True  # PID 1 already adopts every orphan in its namespace
    elif "subreaper" not in settings.disabled:
        subreaper = procs.set_child_subreaper()
        if not subreaper:
            note = "PR_SET_CHILD_SUBREAPER is unavailable: escaped job processes reparent "
            note += "to init; relying on cgroups and the marker sweep"
            log.warning("%s", note)
            server.warnings.append(note)
    if "oom_score" not in settings.disabled:
        procs.set_oom_score_adj(-500) or procs.set_oom_score_adj(0)
    server.details = {
        "resources": detected.to_json(),
        "pool": pool.to_json(),
        "cgroups": caps.describe(),
        "memory_mechanism": mechanism,
        "subreaper": subreaper,
        "pid1": server.pid1,
        "backend": "local",
        "gpus": list(server.gpu_pool.devices),
    }
    server.pool = pool


def configure_logging(paths: Paths, *, detached: bool) -> None:
    """Log to stderr; a foreground server also appends to server.log for ``api logs``."""
    root = logging.getLogger("sky_mini")
    root.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if not detached:
        with contextlib.suppress(OSError):
            # Our own open: 0600 and never through a symlink planted in the home.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            log_file = os.fdopen(os.open(paths.server_log, flags, 0o600), "a", buffering=1)
            handler = logging.StreamHandler(log_file)
            handler.setFormatter(formatter)
            root.addHandler(handler)
    root.propagate = False
