"""Where sky-mini keeps everything under ``$SKY_MINI_HOME`` (default ``~/.sky-mini``).

A leaf module. Layout (who writes what is in docs/ARCHITECTURE.md)::

    config.yaml            optional user config
    server.log             the server's log
    server/lock            flock held by the running server for its whole life
    server/start.lock      taken by a CLI that auto-starts a server
    server/status.json     the server's snapshot for `api status`
    server/wake            FIFO: a byte written here wakes the server's tick loop
    jobs/next_id           the next job ID (guarded by jobs/id.lock)
    jobs/<id>.json         one record per job
    jobs/active.json       the server's list of unfinished job IDs
    jobs/paused.json       which queues `jobs pause` paused (written by clients)
    hooks.log              output of the config's hooks (on_failure, on_finish)
    intents/               requests from clients (cancel-<id>) the server consumes
    logs/<id>.log          each job's stdout and stderr
    secrets/<id>.json      a job's secret values (0600), removed when the job ends
    services/              service records and replica logs
"""

from __future__ import annotations

import os
import stat

HOME_ENV = "SKY_MINI_HOME"
DEFAULT_HOME = "~/.sky-mini"
HOME_MODE = 0o700


class Paths:
    """Every path sky-mini uses, derived from one home directory. Immutable, a value.

    A plain class rather than a frozen dataclass: building a dataclass costs the cron-facing
    ``jobs launch --async`` about half a millisecond at import (docs/PERFORMANCE.md).
    """

    __slots__ = ("home",)
    home: str

    def __init__(self, home: str) -> None:
        object.__setattr__(self, "home", home)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Paths is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Paths is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Paths):
            return NotImplemented
        return self.home == other.home

    def __hash__(self) -> int:
        return hash(self.home)

    def __repr__(self) -> str:
        return f"Paths(home={self.home!r})"

    def __reduce__(self) -> tuple[type[Paths], tuple[str]]:
        return Paths, (self.home,)

    @property
    def config(self) -> str:
        return os.path.join(self.home, "config.yaml")

    @property
    def server_log(self) -> str:
        return os.path.join(self.home, "server.log")

    @property
    def server_dir(self) -> str:
        return os.path.join(self.home, "server")

    @property
    def server_lock(self) -> str:
        return os.path.join(self.server_dir, "lock")

    @property
    def start_lock(self) -> str:
        return os.path.join(self.server_dir, "start.lock")

    @property
    def server_status(self) -> str:
        return os.path.join(self.server_dir, "status.json")

    @property
    def start_log(self) -> str:
        return os.path.join(self.server_dir, "starts.log")

    @property
    def wake_fifo(self) -> str:
        return os.path.join(self.server_dir, "wake")

    @property
    def jobs_dir(self) -> str:
        return os.path.join(self.home, "jobs")

    @property
    def next_id(self) -> str:
        return os.path.join(self.jobs_dir, "next_id")

    @property
    def id_lock(self) -> str:
        return os.path.join(self.jobs_dir, "id.lock")

    @property
    def active_index(self) -> str:
        return os.path.join(self.jobs_dir, "active.json")

    @property
    def paused(self) -> str:
        return os.path.join(self.jobs_dir, "paused.json")

    @property
    def hooks_log(self) -> str:
        return os.path.join(self.home, "hooks.log")

    @property
    def intents_dir(self) -> str:
        return os.path.join(self.home, "intents")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.home, "logs")

    @property
    def services_dir(self) -> str:
        return os.path.join(self.home, "services")

    def job_record(self, job_id: int) -> str:
        return os.path.join(self.jobs_dir, f"{job_id}.json")

    def job_log(self, job_id: int) -> str:
        return os.path.join(self.logs_dir, f"{job_id}.log")

    @property
    def yaml_cache_dir(self) -> str:
        """Parsed task files by content (sky_mini.spec.yamlio); made on first use."""
        return os.path.join(self.home, "cache", "yaml")

    @property
    def secrets_dir(self) -> str:
        return os.path.join(self.home, "secrets")

    def job_secrets(self, job_id: int) -> str:
        return os.path.join(self.secrets_dir, f"{job_id}.json")

    def all_dirs(self) -> tuple[str, ...]:
        return (
            self.home,
            self.server_dir,
            self.jobs_dir,
            self.intents_dir,
            self.logs_dir,
            self.services_dir,
            self.secrets_dir,
        )


def home_dir(env: dict[str, str] | None = None) -> str:
    """The home directory from ``$SKY_MINI_HOME`` (absolute), or ``~/.sky-mini``."""
    source = os.environ if env is None else env
    raw = source.get(HOME_ENV) or DEFAULT_HOME
    return os.path.abspath(os.path.expanduser(raw))


def get_paths() -> Paths:
    return Paths(home_dir())


def check_home_trust(home: str) -> str | None:
    """Why ``home`` must not be used (world-writable, or owned by someone else), or None."""
    try:
        st = os.lstat(home)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"{home} is a symbolic link; point {HOME_ENV} at the real directory"
    if not stat.S_ISDIR(st.st_mode):
        return f"{home} exists but is not a directory; remove it or set {HOME_ENV} elsewhere"
    if st.st_uid != os.getuid():
        return (
            f"{home} is owned by uid {st.st_uid}, not you (uid {os.getuid()}); "
            f"use your own directory via {HOME_ENV}"
        )
    if st.st_mode & stat.S_IWOTH:
        return f"{home} is world-writable; run 'chmod 700 {home}'"
    return None


def ensure_dirs(paths: Paths) -> None:
    """Create the home and its subdirectories with mode 0700.

    Raises PermissionError/OSError from the filesystem; callers turn them into user errors.
    """
    for path in paths.all_dirs():
        try:
            os.mkdir(path, HOME_MODE)
        except FileExistsError:
            pass
