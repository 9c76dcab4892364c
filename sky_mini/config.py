"""Settings from ``$SKY_MINI_HOME/config.yaml``, overridden by env vars, overridden by flags.

Known keys (anything else is rejected with the file and key named)::

    server:
      idle_minutes: 10          # an auto-started server stops after this idle time; false = never
      executors: null           # job executors; null = sized from the machine (see resources.py)
      kill_grace_seconds: 10    # SIGTERM -> SIGKILL grace for cancel and shutdown
    jobs:
      retention_days: 30        # finished jobs older than this are pruned with their logs
      infra: local              # local | slurm | slurm/<partition>: where jobs run by default
      retry_backoff_seconds: 1  # --retries: wait 1 s, 2 s, 4 s ... between attempts
      retry_backoff_max_seconds: 300   # ... never longer than this
    slurm:                      # the cluster the standard Slurm tools reach (SLURM_CONF)
      partition: null
      account: null
      qos: null
      sbatch_args: []           # extra sbatch options, e.g. ['--constraint=ib']
    queues:                     # --queue NAME: at most `parallel` of its jobs run at once
      NAME: {parallel: 1}
    hooks:                      # run by the server when a job ends (SKY_MINI_JOB_* env)
      on_failure: null          # a command, e.g. mail -s "job $SKY_MINI_JOB_ID failed" me
      on_finish: null
      timeout: 60               # seconds; a hook still running then is killed
    limits:
      memory: auto              # auto | cgroup | watchdog: how per-job memory limits are enforced
    resources:
      cpus: null                # override detection (env SKY_MINI_CPUS wins)
      memory: null              # e.g. 2G (env SKY_MINI_MEMORY wins)
    services:
      controller:
        idle_minutes: 10        # the services controller stops this long after the last service
    http:
      listen: null              # e.g. 127.0.0.1:8765: metrics, JSON API and dashboard (off)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from sky_mini.errors import UsageError
from sky_mini.paths import Paths
from sky_mini.units import parse_size

DISABLE_ENV = "SKY_MINI_DISABLE"
DISABLE_CHOICES = frozenset(
    {
        "cgroup",
        "subreaper",
        "sweep",
        "pdeathsig",
        "pipe",
        "fds",
        "oom_score",
        "reap",
        "inotify",
        "revive",
        "http_deadline",
        "unique_lock",
        "hook_detach",
        "pid1",
        "memguard",
        "capacity",
        "secretfile",
        "slurm_lookup",
        "slurm_worker",
        "prefork",
        "prefork_ties",
        "slots",
        "launcher",
    }
)

_ANY_NAMES: dict[str, Any] = {}  # a mapping whose keys the user names (queues)
QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_SCHEMA: dict[str, dict[str, Any]] = {
    "server": {"idle_minutes": None, "executors": None, "kill_grace_seconds": None},
    "jobs": {
        "retention_days": None,
        "retry_backoff_seconds": None,
        "retry_backoff_max_seconds": None,
        "infra": None,
    },
    "queues": _ANY_NAMES,
    "hooks": {"on_failure": None, "on_finish": None, "timeout": None},
    "slurm": {"partition": None, "account": None, "qos": None, "sbatch_args": None},
    "limits": {"memory": None},
    "resources": {"cpus": None, "memory": None},
    "services": {"controller": {"idle_minutes": None}},
    "http": {"listen": None},
}


@dataclass(frozen=True)
class Settings:
    idle_minutes: float | None = 10.0
    executors: int | None = None
    kill_grace_seconds: float = 10.0
    retention_days: float = 30.0
    memory_mechanism: str = "auto"
    cpus: float | None = None
    memory_bytes: int | None = None
    controller_idle_minutes: float | None = 10.0
    http_listen: str | None = None  # "HOST:PORT" (validated by parse_listen)
    disabled: frozenset[str] = frozenset()
    retry_backoff_seconds: float = 1.0
    retry_backoff_max_seconds: float = 300.0
    queues: dict[str, int] = field(default_factory=dict)  # queue name -> parallel
    hook_on_failure: str | None = None
    hook_on_finish: str | None = None
    hook_timeout_seconds: float = 60.0
    infra: str = "local"  # config jobs.infra: where jobs run unless the task or --infra says
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_qos: str | None = None
    slurm_sbatch_args: tuple[str, ...] = ()

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_settings(paths: Paths, env: dict[str, str] | None = None) -> Settings:
    """Read config.yaml (if any) and the environment into :class:`Settings`."""
    source = os.environ if env is None else env
    raw = _read_config(paths.config)
    where = paths.config
    settings = Settings(
        idle_minutes=_minutes(raw, ("server", "idle_minutes"), 10.0, where),
        executors=_positive_int(raw, ("server", "executors"), where),
        kill_grace_seconds=_number(raw, ("server", "kill_grace_seconds"), 10.0, where),
        retention_days=_number(raw, ("jobs", "retention_days"), 30.0, where),
        memory_mechanism=_choice(raw, ("limits", "memory"), ("auto", "cgroup", "watchdog"), where),
        cpus=_optional_number(raw, ("resources", "cpus"), where),
        memory_bytes=_optional_size(raw, ("resources", "memory"), where),
        controller_idle_minutes=_minutes(
            raw, ("services", "controller", "idle_minutes"), 10.0, where
        ),
        http_listen=_listen(raw, ("http", "listen"), where),
        disabled=parse_disabled(source.get(DISABLE_ENV, "")),
        retry_backoff_seconds=_number(raw, ("jobs", "retry_backoff_seconds"), 1.0, where),
        retry_backoff_max_seconds=_number(raw, ("jobs", "retry_backoff_max_seconds"), 300.0, where),
        queues=_queues(raw, where),
        hook_on_failure=_command(raw, ("hooks", "on_failure"), where),
        hook_on_finish=_command(raw, ("hooks", "on_finish"), where),
        hook_timeout_seconds=_number(raw, ("hooks", "timeout"), 60.0, where),
        infra=_infra(raw, where),
        slurm_partition=_optional_text(raw, ("slurm", "partition"), where),
        slurm_account=_optional_text(raw, ("slurm", "account"), where),
        slurm_qos=_optional_text(raw, ("slurm", "qos"), where),
        slurm_sbatch_args=_text_list(raw, ("slurm", "sbatch_args"), where),
    )
    grace = source.get("SKY_MINI_KILL_GRACE_SECONDS")
    if grace:
        try:
            settings = replace(settings, kill_grace_seconds=max(0.0, float(grace)))
        except ValueError:
            raise UsageError(
                f"SKY_MINI_KILL_GRACE_SECONDS={grace!r} is not a number of seconds; use e.g. 10"
            ) from None
    mechanism = source.get("SKY_MINI_MEMORY_MECHANISM")
    if mechanism:
        if mechanism not in ("auto", "cgroup", "watchdog"):
            raise UsageError(
                f"SKY_MINI_MEMORY_MECHANISM={mechanism!r}: use auto, cgroup or watchdog"
            )
        settings = replace(settings, memory_mechanism=mechanism)
    return settings


def parse_disabled(value: str) -> frozenset[str]:
    """Parse the test-only ``SKY_MINI_DISABLE`` list (e.g. ``cgroup,subreaper,sweep``)."""
    items = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = items - DISABLE_CHOICES
    if unknown:
        raise UsageError(
            f"{DISABLE_ENV}: unknown item(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(DISABLE_CHOICES))}"
        )
    return items


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port); ValueError says what is wrong.

    Port 0 asks the kernel for a free port (``api status`` shows the one chosen).
    """
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT; use e.g. 127.0.0.1:8765")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    if not host or any(c.isspace() or c in "/[]@" for c in host):
        raise ValueError(f"{value!r}: {host!r} is not a host name or IP address")
    return host, int(port_text)


def _listen(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> str | None:
    value = _lookup(raw, keys)
    if value is None or value is False:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{where}: key '{'.'.join(keys)}' must be HOST:PORT, e.g. 127.0.0.1:8765")
    try:
        parse_listen(value)
    except ValueError as exc:
        raise UsageError(f"{where}: key '{'.'.join(keys)}': {exc}") from None
    return value.strip()


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.lexists(path):
        return {}
    import yaml  # lazily: most CLI calls have no config file

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read the config file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the config file must be a mapping of sections")
    _check_keys(data, _SCHEMA, path, "")
    return data


def _check_keys(data: dict[str, Any], schema: dict[str, Any], path: str, prefix: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(f"{prefix}{k}" for k in schema)
            raise UsageError(f"{path}: unknown key '{dotted}'; allowed: {allowed}")
        if schema[key] is _ANY_NAMES:
            continue  # checked by its own parser
        if isinstance(schema[key], dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise UsageError(f"{path}: key '{dotted}' must be a mapping")
            _check_keys(value, schema[key], path, f"{dotted}.")


def _lookup(raw: dict[str, Any], keys: tuple[str, ...]) -> Any:
    node: Any = raw
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _number(raw: dict[str, Any], keys: tuple[str, ...], default: float, where: str) -> float:
    value = _optional_number(raw, keys, where)
    return default if value is None else value


def _optional_number(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> float | None:
    value = _lookup(raw, keys)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise UsageError(f"{where}: key '{'.'.join(keys)}' must be a non-negative number")
    return float(value)


def _minutes(
    raw: dict[str, Any], keys: tuple[str, ...], default: float, where: str
) -> float | None:
    value = _lookup(raw, keys)
    if value is False:
        return None
    if value is None:
        return default
    return _number(raw, keys, default, where)


def _positive_int(
    raw: dict[str, Any], keys: tuple[str, ...], where: str, prefix: str = ""
) -> int | None:
    value = _lookup(raw, keys)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where}: key '{prefix}{'.'.join(keys)}' must be a whole number ≥ 1")
    return value


def _choice(
    raw: dict[str, Any], keys: tuple[str, ...], choices: tuple[str, ...], where: str
) -> str:
    value = _lookup(raw, keys)
    if value is None:
        return choices[0]
    if value not in choices:
        raise UsageError(f"{where}: key '{'.'.join(keys)}' must be one of {', '.join(choices)}")
    return str(value)


def _optional_size(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> int | None:
    value = _lookup(raw, keys)
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise UsageError(f"{where}: key '{'.'.join(keys)}': {exc}") from None


def _queues(raw: dict[str, Any], where: str) -> dict[str, int]:
    """``queues: {NAME: {parallel: N}}`` (``parallel`` defaults to 1)."""
    value = raw.get("queues")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(
            f"{where}: key 'queues' must be a mapping such as {{nightly: {{parallel: 1}}}}"
        )
    queues: dict[str, int] = {}
    for name, body in value.items():
        if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
            raise UsageError(
                f"{where}: queue name {name!r} under 'queues': use letters, digits, '_', '.', '-'"
            )
        body = {} if body is None else body
        if not isinstance(body, dict) or set(body) - {"parallel"}:
            raise UsageError(f"{where}: key 'queues.{name}' must be a mapping with 'parallel'")
        parallel = _positive_int(body, ("parallel",), where, prefix=f"queues.{name}.")
        queues[name] = 1 if parallel is None else parallel
    return queues


def _command(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> str | None:
    value = _lookup(raw, keys)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise UsageError(f"{where}: key '{'.'.join(keys)}' must be a shell command (a string)")
    return value


def _infra(raw: dict[str, Any], where: str) -> str:
    value = _lookup(raw, ("jobs", "infra"))
    if value is None:
        return "local"
    from sky_mini.spec import parse_infra  # lazily: only a config that sets it pays

    return parse_infra(value, where, "jobs.infra")


def _optional_text(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> str | None:
    value = _lookup(raw, keys)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise UsageError(f"{where}: key '{'.'.join(keys)}' must be a word (e.g. debug)")
    return value


def _text_list(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> tuple[str, ...]:
    value = _lookup(raw, keys)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(
            f"{where}: key '{'.'.join(keys)}' must be a list of sbatch options, "
            "e.g. ['--constraint=ib']"
        )
    return tuple(value)
