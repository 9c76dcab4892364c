"""The machine's capacity as the running server detected it, published for the submit path.

``jobs launch`` rejects at submit what the machine can never give. Detecting the machine
(cgroup files of every ancestor, ``/proc/self/mountinfo``, affinity, config.yaml) costs the
cron-facing ``--async`` call several milliseconds and two module imports, while the running
server has already done it. So the server writes ``server/capacity.json`` at start-up and
the client uses it instead, but only while it is exactly what the client would have found
from the same inputs:

- the server that wrote it still runs (its PID has the same start time in ``/proc``);
- ``SKY_MINI_CPUS`` and ``SKY_MINI_MEMORY`` read the same in the client as in the server;
- ``config.yaml`` has the same size and mtime (or is absent in both), so it is the file the
  server read and validated.

Otherwise (no server, another shell's overrides, an edited config) the client detects for
itself as before.

The same file carries the settings the submit path needs from config.yaml (``jobs.infra``,
``slurm.partition``), so ``--async`` need not import :mod:`sky_mini.config`. They are used
under the same config stamp, and only while the variables ``load_settings`` reads
(``SETTINGS_ENV``) are the same in the client as in the server: then ``load_settings`` would
return what the server got, and would raise nothing (the server validated that file).
``SKY_MINI_DISABLE=capacity`` (test-only) makes the client ignore the file.
A leaf module: standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

FILE_NAME = "capacity.json"
SCHEMA = 1
INPUT_ENV = ("SKY_MINI_CPUS", "SKY_MINI_MEMORY")
SETTINGS_ENV = ("SKY_MINI_DISABLE", "SKY_MINI_KILL_GRACE_SECONDS", "SKY_MINI_MEMORY_MECHANISM")
"""What sky_mini.config.load_settings reads from the environment besides config.yaml."""


def capacity_path(server_dir: str) -> str:
    return os.path.join(server_dir, FILE_NAME)


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks), or None if it is gone.

    A zombie counts as gone: a stopped server stays one until its parent (often a slow
    init) reaps it.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def config_stamp(config_path: str) -> list[int] | None:
    """(size, mtime_ns) of config.yaml, or None when there is none."""
    try:
        st = os.stat(config_path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def inputs(config_path: str, env: Mapping[str, str]) -> dict[str, Any]:
    """What detection depends on besides the machine: the overrides and the config file."""
    return {
        "env": {name: env.get(name, "").strip() for name in INPUT_ENV},
        "config": config_stamp(config_path),
    }


def settings_env(env: Mapping[str, str]) -> dict[str, str]:
    return {name: env.get(name, "") for name in SETTINGS_ENV}


def publish(
    server_dir: str,
    config_path: str,
    cpus: float,
    memory_bytes: int,
    settings: Mapping[str, str | None] | None = None,
) -> None:
    """Server side: write what it detected (not fsynced: a lost file only means detecting),
    and ``settings`` (``infra``, ``slurm_partition``) as this server's load_settings gave."""
    pid = os.getpid()
    data = {
        "schema": SCHEMA,
        "pid": pid,
        "start_ticks": process_start_ticks(pid),
        "cpus": cpus,
        "memory_bytes": memory_bytes,
        "inputs": inputs(config_path, os.environ),
    }
    if settings is not None:
        data["settings"] = dict(settings)
        data["settings_env"] = settings_env(os.environ)
    path = capacity_path(server_dir)
    tmp = f"{path}.{pid}.tmp"
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)


def read_current(server_dir: str, config_path: str) -> dict[str, Any] | None:
    """The published file while the server that wrote it still runs and config.yaml is the
    file it read (same size and mtime, or absent in both); else None."""
    if "capacity" in os.environ.get("SKY_MINI_DISABLE", "").replace(" ", "").split(","):
        return None
    try:
        with open(capacity_path(server_dir), "rb") as handle:
            data = json.loads(handle.read())
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            return None
        pid = int(data["pid"])
        ticks = data["start_ticks"]
        stamp = data["inputs"]["config"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if ticks is None or process_start_ticks(pid) != ticks:
        return None  # written by a server that is gone (or a reused PID)
    if stamp != config_stamp(config_path):
        return None
    return data


def read_published(
    server_dir: str, config_path: str, current: dict[str, Any] | None = None
) -> tuple[float, int] | None:
    """Client side: (cpus, memory_bytes) from the running server, or None to detect.
    ``current``: what :func:`read_current` returned, when the caller has read it already."""
    data = read_current(server_dir, config_path) if current is None else current
    if data is None:
        return None
    try:
        cpus, memory = float(data["cpus"]), int(data["memory_bytes"])
    except (ValueError, KeyError, TypeError):
        return None
    if data.get("inputs") != inputs(config_path, os.environ):
        return None
    if cpus <= 0 or memory <= 0:
        return None
    return cpus, memory


def read_setting(
    server_dir: str, config_path: str, name: str, current: dict[str, Any] | None = None
) -> tuple[bool, str | None]:
    """Client side: (True, value) of setting ``name`` as the running server loaded it from
    the same config.yaml and environment, or (False, None) to call load_settings."""
    data = read_current(server_dir, config_path) if current is None else current
    if data is None or data.get("settings_env") != settings_env(os.environ):
        return False, None
    settings = data.get("settings")
    if not isinstance(settings, dict) or name not in settings:
        return False, None
    value = settings[name]
    if value is not None and not isinstance(value, str):
        return False, None
    return True, value
