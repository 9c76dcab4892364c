"""Task and service specs: load YAML files (or CLI flags) into typed, frozen dataclasses.

Everything a user can get wrong in a spec is raised as :class:`SpecError` naming the file,
the dotted key, what was found and what is allowed (exit 2). YAML is read with a safe
loader only, with limits on size, nesting, aliases and alias expansion, so a hostile or
broken file is rejected cleanly instead of running code or exhausting memory.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import stat
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sky_mini.errors import SpecError, UsageError
from sky_mini.units import format_size, parse_duration, parse_size

if TYPE_CHECKING:
    import yaml

# yaml is imported inside the functions that read YAML: `jobs launch -- CMD` (the cron path)
# never parses YAML and should not pay ~20 ms to import it.

MAX_FILE_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64
MAX_NAME_CHARS = 100
MAX_REPLICAS = 64
MAX_PROBE_PATH_CHARS = 2048
MIN_MEMORY_BYTES = 4 * 1024 * 1024

TASK_KEYS = ("name", "workdir", "envs", "setup", "run", "resources")
RESOURCE_KEYS = ("cpus", "memory", "timeout", "job_recovery")
JOB_RECOVERY_KEYS = ("max_restarts_on_errors", "strategy")
MAX_RETRIES = 100
DEFAULT_CPUS = 1.0
SERVICE_KEYS = (
    "name",
    "run",
    "setup",
    "replicas",
    "port",
    "readiness_probe",
    "resources",
    "envs",
    "workdir",
)
PROBE_KEYS = ("path", "initial_delay_seconds", "timeout_seconds")

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SERVICE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ResourceSpec:
    """What a job or replica reserves and may use."""

    cpus: float = DEFAULT_CPUS
    memory_bytes: int | None = None
    timeout_seconds: float | None = None
    max_restarts_on_errors: int = 0  # job_recovery / --retries
    # True while nobody asked for ``cpus``: then the reservation is min(1, machine CPUs),
    # resolved where the machine is known (submit-time fit check, server admission).
    cpus_defaulted: bool = True

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "cpus": self.cpus,
            "cpus_defaulted": self.cpus_defaulted,
            "memory_bytes": self.memory_bytes,
            "timeout_seconds": self.timeout_seconds,
        }
        if self.max_restarts_on_errors:
            data["max_restarts_on_errors"] = self.max_restarts_on_errors
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResourceSpec:
        """Rebuild from :meth:`to_json` output; missing keys take their defaults."""
        memory = data.get("memory_bytes")
        timeout = data.get("timeout_seconds")
        return cls(
            cpus=float(data.get("cpus", DEFAULT_CPUS)),
            # Records written before this key existed: a recorded cpus was a request.
            cpus_defaulted=bool(data.get("cpus_defaulted", "cpus" not in data)),
            memory_bytes=None if memory is None else int(memory),
            timeout_seconds=None if timeout is None else float(timeout),
            max_restarts_on_errors=int(data.get("max_restarts_on_errors") or 0),
        )


@dataclass(frozen=True)
class TaskSpec:
    """A job to run: ``setup`` then ``run`` in ``workdir`` with ``envs`` exported.

    ``run``/``setup`` hold the commands with ``${VAR}`` already expanded from ``envs``.
    ``run_template``/``setup_template`` keep the unexpanded text of a YAML task so that
    :func:`apply_overrides` can re-expand after ``--env``; they are not serialised.
    """

    run: str
    name: str | None = None
    setup: str | None = None
    workdir: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    run_template: str | None = field(default=None, repr=False, compare=False)
    setup_template: str | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run": self.run,
            "setup": self.setup,
            "workdir": self.workdir,
            "envs": dict(self.envs),
            "resources": self.resources.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Rebuild from :meth:`to_json` output (trusted state, not user input)."""
        return cls(
            run=str(data["run"]),
            name=_optional_str(data.get("name")),
            setup=_optional_str(data.get("setup")),
            workdir=_optional_str(data.get("workdir")),
            envs={str(k): str(v) for k, v in (data.get("envs") or {}).items()},
            resources=ResourceSpec.from_json(data.get("resources") or {}),
        )


@dataclass(frozen=True)
class ReadinessProbe:
    """HTTP GET ``path`` on a replica's port; a 2xx answer means READY."""

    path: str = "/"
    initial_delay_seconds: float = 0.0
    timeout_seconds: float = 5.0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "initial_delay_seconds": self.initial_delay_seconds,
            "timeout_seconds": self.timeout_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReadinessProbe:
        return cls(
            path=str(data.get("path", "/")),
            initial_delay_seconds=float(data.get("initial_delay_seconds", 0.0)),
            timeout_seconds=float(data.get("timeout_seconds", 5.0)),
        )


@dataclass(frozen=True)
class ServiceSpec:
    """A long-running service: ``replicas`` copies of ``run``, each given ``$PORT``."""

    name: str
    run: str
    replicas: int = 1
    port: int | None = None
    readiness_probe: ReadinessProbe | None = None
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    envs: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    setup: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run": self.run,
            "replicas": self.replicas,
            "port": self.port,
            "readiness_probe": (
                None if self.readiness_probe is None else self.readiness_probe.to_json()
            ),
            "resources": self.resources.to_json(),
            "envs": dict(self.envs),
            "workdir": self.workdir,
            "setup": self.setup,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceSpec:
        probe = data.get("readiness_probe")
        port = data.get("port")
        return cls(
            name=str(data["name"]),
            run=str(data["run"]),
            replicas=int(data.get("replicas", 1)),
            port=None if port is None else int(port),
            readiness_probe=None if probe is None else ReadinessProbe.from_json(probe),
            resources=ResourceSpec.from_json(data.get("resources") or {}),
            envs={str(k): str(v) for k, v in (data.get("envs") or {}).items()},
            workdir=_optional_str(data.get("workdir")),
            setup=_optional_str(data.get("setup")),
        )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- public API


def load_task(path: str) -> TaskSpec:
    """Load and validate a task YAML file. Relative ``workdir`` is resolved against the
    file's directory; ``${VAR}`` in ``setup``/``run`` is expanded from ``envs``."""
    data = _load_mapping(path, "a task")
    _check_keys(data, TASK_KEYS, path, "")
    envs = _parse_envs(data.get("envs"), path, "envs")
    run = _parse_run(data.get("run"), path)
    setup = _parse_command(data.get("setup"), path, "setup", required=False)
    return TaskSpec(
        run=expand_env_refs(run, envs),
        name=_parse_name(data.get("name"), path, "name"),
        setup=None if setup is None else expand_env_refs(setup, envs),
        workdir=_parse_workdir(data.get("workdir"), path, "workdir", _yaml_dir(path)),
        envs=envs,
        resources=_parse_resources(data.get("resources"), path, "resources"),
        run_template=run,
        setup_template=setup,
    )


def task_from_command(argv: Sequence[str], *, name: str | None, cwd: str) -> TaskSpec:
    """Build a task for ``jobs launch -- CMD ARGS...``: ``run`` is ``shlex.join(argv)``,
    ``workdir`` is ``cwd`` made absolute. The command is taken literally: no ``${VAR}``
    expansion (the shell still expands variables the user did not quote)."""
    source = "command line"
    if not argv:
        raise SpecError(source, "--", "no command given; use 'jobs launch -- CMD ARGS...'")
    for index, arg in enumerate(argv):
        _check_text(arg, source, f"argv[{index}]")
    workdir = os.path.abspath(cwd)
    if not os.path.isdir(workdir):
        raise SpecError(source, "cwd", f"working directory {workdir!r} is not a directory")
    return TaskSpec(
        run=shlex.join(argv),
        name=_parse_name(name, source, "--name"),
        workdir=workdir,
    )


def apply_overrides(
    spec: TaskSpec,
    *,
    name: str | None = None,
    envs: Mapping[str, str] | None = None,
    cpus: float | str | None = None,
    memory: str | None = None,
    timeout: str | None = None,
    retries: int | None = None,
    source: str = "command line",
) -> TaskSpec:
    """Return ``spec`` with CLI flags applied on top (flags win over the YAML).

    ``envs`` is merged into the spec's envs; a YAML task's ``${VAR}`` references are
    re-expanded with the merged values. Bad values raise SpecError naming the flag.
    """
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = _parse_name(name, source, "--name")
    if envs:
        merged = dict(spec.envs)
        for key, value in envs.items():
            if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
                raise SpecError(source, "--env", _bad_env_name(key))
            merged[key] = _check_text(_env_value(value, source, f"--env {key}"), source, "--env")
        changes["envs"] = merged
        if spec.run_template is not None:
            changes["run"] = expand_env_refs(spec.run_template, merged)
        if spec.setup_template is not None:
            changes["setup"] = expand_env_refs(spec.setup_template, merged)
    resource_changes: dict[str, Any] = {}
    if cpus is not None:
        resource_changes["cpus"] = _parse_cpus(cpus, source, "--cpus")
        resource_changes["cpus_defaulted"] = False
    if memory is not None:
        resource_changes["memory_bytes"] = _parse_memory(memory, source, "--memory")
    if timeout is not None:
        resource_changes["timeout_seconds"] = _parse_timeout(timeout, source, "--timeout")
    if retries is not None:
        resource_changes["max_restarts_on_errors"] = _parse_int(
            retries, source, "--retries", 0, MAX_RETRIES
        )
    if resource_changes:
        changes["resources"] = replace(spec.resources, **resource_changes)
    return replace(spec, **changes) if changes else spec


def parse_env_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """Parse repeated ``--env K=V`` into a dict (later ones win). ``V`` may be empty."""
    result: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE, e.g. --env DATE=2024-01-01")
        if not ENV_NAME_RE.fullmatch(key):
            raise UsageError(f"--env {item!r}: {_bad_env_name(key)}")
        if "\0" in value:
            raise UsageError(f"--env {item!r}: the value must not contain a NUL character")
        result[key] = value
    return result


def load_service(path: str) -> ServiceSpec:
    """Load and validate a service YAML file (see CONTRACT "Services")."""
    data = _load_mapping(path, "a service")
    _check_keys(data, SERVICE_KEYS, path, "")
    envs = _parse_envs(data.get("envs"), path, "envs")
    if "PORT" in envs:
        raise SpecError(
            path, "envs.PORT", "PORT is set by sky-mini for each replica; remove it from envs"
        )
    run = _parse_run(data.get("run"), path)
    setup = _parse_command(data.get("setup"), path, "setup", required=False)
    return ServiceSpec(
        name=_parse_service_name(data.get("name"), path),
        run=expand_env_refs(run, envs),
        replicas=(
            1
            if data.get("replicas") is None
            else _parse_int(data["replicas"], path, "replicas", 1, MAX_REPLICAS)
        ),
        port=(
            None if data.get("port") is None else _parse_int(data["port"], path, "port", 1, 65535)
        ),
        readiness_probe=_parse_probe(data.get("readiness_probe"), path),
        resources=_parse_resources(data.get("resources"), path, "resources"),
        envs=envs,
        workdir=_parse_workdir(data.get("workdir"), path, "workdir", _yaml_dir(path)),
        setup=None if setup is None else expand_env_refs(setup, envs),
    )


def effective_cpus(cpus: float, defaulted: bool, machine_cpus: float) -> float:
    """The CPUs a job reserves: a default request is min(1, machine CPUs), so that a
    0.5 CPU container (Kubernetes ``cpu: 500m``) runs default jobs; an explicit one is kept."""
    return min(cpus, machine_cpus) if defaulted else cpus


def check_fits(
    resources: ResourceSpec, *, machine_cpus: float, machine_memory_bytes: int, path: str
) -> None:
    """Reject resources this machine can never give (so the job would pend forever).

    A default CPU request always fits (see :func:`effective_cpus`); memory has no default
    reservation.
    """
    if effective_cpus(resources.cpus, resources.cpus_defaulted, machine_cpus) > machine_cpus:
        raise SpecError(
            path,
            "resources.cpus",
            f"{resources.cpus:g} CPUs is more than this machine can ever give "
            f"({machine_cpus:g} CPU); lower it or set SKY_MINI_CPUS",
        )
    if resources.memory_bytes is not None and resources.memory_bytes > machine_memory_bytes:
        raise SpecError(
            path,
            "resources.memory",
            f"{format_size(resources.memory_bytes)} is more than this machine can ever give "
            f"({format_size(machine_memory_bytes)}); lower it or set SKY_MINI_MEMORY",
        )


def expand_env_refs(text: str, envs: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` for each NAME in ``envs``; leave ``$NAME`` and unknown
    ``${X}`` for the shell."""

    def substitute(match: re.Match[str]) -> str:
        return envs.get(match.group(1), match.group(0))

    return _ENV_REF_RE.sub(substitute, text)


# --------------------------------------------------------------------------- reading YAML


def _make_loader(base: type[Any]) -> type[Any]:
    """A safe loader that keeps dates as strings (``DATE: 2024-01-01`` stays text)."""
    resolvers = {
        first: [(tag, regexp) for tag, regexp in entries if tag != _TIMESTAMP_TAG]
        for first, entries in base.yaml_implicit_resolvers.items()
    }
    return type("SpecLoader", (base,), {"yaml_implicit_resolvers": resolvers})


_LOADER: type[Any] | None = None  # built on first use (tests may substitute their own)


def _loader() -> type[Any]:
    """The spec loader class: libyaml's CSafeLoader when available, else the pure-Python one."""
    global _LOADER
    if _LOADER is None:
        try:
            from yaml import CSafeLoader as base
        except ImportError:  # PyYAML built without libyaml
            from yaml import SafeLoader as base  # type: ignore[assignment]
        _LOADER = _make_loader(base)
    return _LOADER


def _read_text(path: str) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SpecError(path, None, "no such file; check the path") from None
    except OSError as exc:
        raise SpecError(
            path, None, f"cannot read the file ({exc.strerror}); check the path"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(path, None, "not a regular file; give the path of a YAML file")
    if info.st_size > MAX_FILE_BYTES:
        raise SpecError(
            path,
            None,
            f"file is {format_size(info.st_size)}, larger than the "
            f"{format_size(MAX_FILE_BYTES)} allowed for a spec; is this the right file?",
        )
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(
            path, None, f"cannot read the file ({exc.strerror}); check its permissions"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(path, None, f"file is larger than {format_size(MAX_FILE_BYTES)}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            path, None, f"not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None


def _load_mapping(path: str, what: str) -> dict[Any, Any]:
    text = _read_text(path)
    import yaml

    _check_events(text, path)
    loader = _loader()(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise SpecError(path, None, _yaml_problem(exc)) from None
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        raise SpecError(
            path, None, f"a value cannot be read ({exc}); shorten or quote it"
        ) from None
    except RecursionError:
        raise SpecError(path, None, f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()
    if data is None:
        raise SpecError(path, None, f"the file is empty; it must be a mapping describing {what}")
    if not isinstance(data, dict):
        raise SpecError(
            path,
            None,
            f"the top level must be a mapping (key: value lines) describing {what}; "
            f"found {_describe(data)}",
        )
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if "maximum nesting depth" in problem:
            # libyaml 0.2.6 (in PyYAML 6.0.4 wheels) stops at depth 1000 while scanning,
            # before our own check sees the events: say it the same way either way.
            problem = f"nested more than {MAX_DEPTH} levels deep"
        if mark is not None:
            return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
        return f"invalid YAML: {problem}"
    return f"invalid YAML: {exc}"


@dataclass
class _Frame:
    """One open collection while scanning events (see :func:`_check_events`)."""

    is_mapping: bool
    anchor: str | None
    size: int = 1
    expect_key: bool = True
    keys: set[str] = field(default_factory=set)


def _check_events(text: str, path: str) -> None:
    """Scan the event stream before building anything: one document, bounded nesting,
    at most MAX_ALIASES aliases, no recursive alias, no duplicate keys, and at most
    MAX_EXPANDED_NODES nodes once aliases are expanded ("billion laughs")."""
    import yaml

    stack: list[_Frame] = []
    anchors: dict[str, int | None] = {}  # None while the anchored node is still open
    documents = 0
    aliases = 0

    def where(event: yaml.Event) -> str:
        mark = event.start_mark
        return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"

    def finish_node(size: int, event: yaml.Event) -> None:
        if not stack:
            return
        parent = stack[-1]
        if parent.is_mapping:
            if parent.expect_key and isinstance(event, yaml.ScalarEvent):
                if event.value in parent.keys and event.value != "<<":
                    raise SpecError(
                        path,
                        None,
                        f"duplicate key {_short(event.value)} at {where(event)}; "
                        "each key may appear once",
                    )
                parent.keys.add(event.value)
            parent.expect_key = not parent.expect_key
        parent.size += size
        if parent.size > MAX_EXPANDED_NODES:
            raise SpecError(
                path,
                None,
                f"expands to more than {MAX_EXPANDED_NODES} values (aliases multiply); "
                "a spec this large is not allowed",
            )

    try:
        for event in yaml.parse(text, Loader=_loader()):
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise SpecError(
                        path,
                        None,
                        f"more than one YAML document ('---' at {where(event)}); "
                        "put one spec per file",
                    )
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise SpecError(
                        path, None, f"more than {MAX_ALIASES} aliases (*name); not allowed"
                    )
                if event.anchor not in anchors:
                    raise SpecError(
                        path,
                        None,
                        f"alias *{event.anchor} at {where(event)} is not defined; "
                        f"an anchor &{event.anchor} must come before it",
                    )
                if anchors[event.anchor] is None:
                    raise SpecError(
                        path,
                        None,
                        f"alias *{event.anchor} at {where(event)} refers to itself; "
                        "recursive structures are not allowed",
                    )
                finish_node(anchors[event.anchor] or 1, event)
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor is not None:
                    anchors[event.anchor] = 1
                finish_node(1, event)
            elif isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise SpecError(
                        path,
                        None,
                        f"nested more than {MAX_DEPTH} levels deep at {where(event)}",
                    )
                if event.anchor is not None:
                    anchors[event.anchor] = None
                is_mapping = isinstance(event, yaml.MappingStartEvent)
                stack.append(_Frame(is_mapping=is_mapping, anchor=event.anchor))
            elif isinstance(event, yaml.CollectionEndEvent) and stack:
                frame = stack.pop()
                if frame.anchor is not None:
                    anchors[frame.anchor] = frame.size
                finish_node(frame.size, event)
    except yaml.YAMLError as exc:
        raise SpecError(path, None, _yaml_problem(exc)) from None


# --------------------------------------------------------------------------- validation


def _describe(value: object) -> str:
    """Say what was found, briefly and without rendering a large structure."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        digits = len(str(abs(value))) if abs(value) < 10**100 else 101
        return f"an integer ({value})" if digits <= 100 else "a very long integer"
    if isinstance(value, float):
        return f"a number ({value:g})"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a value of type {type(value).__name__}"


def _short(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


def _check_keys(data: Mapping[Any, Any], allowed: Sequence[str], path: str, prefix: str) -> None:
    for key in data:
        if isinstance(key, str) and key in allowed:
            continue
        shown = key if isinstance(key, str) else str(key)[:60]
        dotted = f"{prefix}{shown}"
        hint = ""
        if isinstance(key, str):
            import difflib  # only to suggest a key: not on the cron path

            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                hint = f"did you mean '{close[0]}'? "
        raise SpecError(
            path, dotted, f"unknown key; {hint}allowed keys here: {', '.join(sorted(allowed))}"
        )


def _mapping(value: object, path: str, key: str, allowed: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise SpecError(path, key, f"expected a mapping of {allowed}; found {_describe(value)}")
    return value


def _check_text(text: str, path: str, key: str) -> str:
    """Reject strings that cannot be passed to exec/environ: NUL, lone surrogates."""
    if "\0" in text:
        raise SpecError(path, key, "must not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(path, key, "contains characters that are not valid Unicode") from None
    return text


_COMMAND_ALLOWED = "a shell command (a string, or a list of strings run one per line)"


def _parse_run(value: object, path: str) -> str:
    run = _parse_command(value, path, "run", required=True)
    if run is None:
        raise SpecError(path, "run", f"missing; give {_COMMAND_ALLOWED}")
    return run


def _parse_command(value: object, path: str, key: str, *, required: bool) -> str | None:
    """A shell command: a string, or a list of strings joined with newlines."""
    allowed = _COMMAND_ALLOWED
    if value is None:
        if required:
            raise SpecError(path, key, f"missing; give {allowed}")
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise SpecError(
                    path, f"{key}[{index}]", f"expected a string; found {_describe(item)}"
                )
        text = "\n".join(value)
    elif isinstance(value, str):
        text = value
    else:
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}")
    if not text.strip():
        if required:
            raise SpecError(path, key, f"is empty; give {allowed}")
        return None
    return _check_text(text, path, key)


def _parse_name(value: object, path: str, key: str) -> str | None:
    allowed = f"a string of 1 to {MAX_NAME_CHARS} characters on one line"
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(path, key, f"expected {allowed} (quote it); found {_describe(value)}")
    if not value.strip() or len(value) > MAX_NAME_CHARS:
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        raise SpecError(path, key, f"must not contain newlines or control characters; {allowed}")
    return _check_text(value, path, key)


def _parse_service_name(value: object, path: str) -> str:
    allowed = (
        "1 to 63 lowercase letters, digits and dashes, starting with a letter or digit "
        "(e.g. my-api)"
    )
    if value is None:
        raise SpecError(path, "name", f"missing; a service needs a name of {allowed}")
    if not isinstance(value, str) or not SERVICE_NAME_RE.fullmatch(value):
        raise SpecError(path, "name", f"expected {allowed}; found {_describe(value)}")
    return value


def _bad_env_name(name: object) -> str:
    shown = _short(name) if isinstance(name, str) else _describe(name)
    return (
        f"{shown} is not a valid environment variable name; use letters, digits and "
        "underscores, not starting with a digit (e.g. MY_VAR)"
    )


def _env_value(value: object, path: str, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise SpecError(
        path,
        key,
        f"expected a string, number or boolean; found {_describe(value)} (use '' for empty)",
    )


def _parse_envs(value: object, path: str, key: str) -> dict[str, str]:
    if value is None:
        return {}
    raw = _mapping(value, path, key, "NAME: value pairs")
    envs: dict[str, str] = {}
    for name, item in raw.items():
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            raise SpecError(path, key, _bad_env_name(name))
        envs[name] = _check_text(_env_value(item, path, f"{key}.{name}"), path, f"{key}.{name}")
    return envs


def _yaml_dir(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _parse_workdir(value: object, path: str, key: str, base: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(
            path,
            key,
            f"expected a directory path (relative to the YAML file); found {_describe(value)}",
        )
    _check_text(value, path, key)
    resolved = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    if not os.path.isdir(resolved):
        raise SpecError(
            path,
            key,
            f"{_short(value)} resolves to {resolved!r}, which is not an existing directory; "
            "create it or fix the path (relative paths are relative to the YAML file)",
        )
    return resolved


def _parse_resources(value: object, path: str, key: str) -> ResourceSpec:
    if value is None:
        return ResourceSpec()
    raw = _mapping(value, path, key, "cpus, memory, timeout and job_recovery")
    _check_keys(raw, RESOURCE_KEYS, path, f"{key}.")
    cpus = raw.get("cpus")
    memory = raw.get("memory")
    timeout = raw.get("timeout")
    return ResourceSpec(
        max_restarts_on_errors=_parse_job_recovery(
            raw.get("job_recovery"), path, f"{key}.job_recovery"
        ),
        cpus=DEFAULT_CPUS if cpus is None else _parse_cpus(cpus, path, f"{key}.cpus"),
        cpus_defaulted=cpus is None,
        memory_bytes=None if memory is None else _parse_memory(memory, path, f"{key}.memory"),
        timeout_seconds=(
            None if timeout is None else _parse_timeout(timeout, path, f"{key}.timeout")
        ),
    )


def _parse_job_recovery(value: object, path: str, key: str) -> int:
    """SkyPilot's ``job_recovery``: a strategy name (nothing to recover here: 0 retries) or
    ``{max_restarts_on_errors: N, strategy: ...}``; only the count means anything here."""
    if value is None or isinstance(value, str):
        return 0
    raw = _mapping(value, path, key, "max_restarts_on_errors (and strategy)")
    _check_keys(raw, JOB_RECOVERY_KEYS, path, f"{key}.")
    count = raw.get("max_restarts_on_errors")
    return (
        0
        if count is None
        else _parse_int(count, path, f"{key}.max_restarts_on_errors", 0, MAX_RETRIES)
    )


def _parse_cpus(value: object, path: str, key: str) -> float:
    allowed = "a number greater than 0, such as 1, 0.5 or 4"
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}")
    return number


def _parse_with(
    parser: Callable[[str | int | float], float], value: object, path: str, key: str, allowed: str
) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}")
    try:
        number = float(parser(value))
    except (ValueError, OverflowError):
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}") from None
    if not math.isfinite(number):
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}")
    return number


def _parse_memory(value: object, path: str, key: str) -> int:
    allowed = f"a size of at least {format_size(MIN_MEMORY_BYTES)}, such as 512M or 2G"
    number = int(_parse_with(parse_size, value, path, key, allowed))
    if number < MIN_MEMORY_BYTES:
        hint = f" (a bare number is bytes; did you mean {value}M?)" if _is_bare(value) else ""
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}{hint}")
    return number


def _is_bare(value: object) -> bool:
    return isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit())


def _parse_timeout(value: object, path: str, key: str) -> float:
    allowed = "a duration greater than 0, such as 90, 30s, 5m or 2h"
    number = _parse_with(parse_duration, value, path, key, allowed)
    if number <= 0:
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}")
    return number


def _parse_seconds(value: object, path: str, key: str, *, allow_zero: bool) -> float:
    bound = "0 or more" if allow_zero else "greater than 0"
    allowed = f"a number of seconds {bound} (or a duration such as 30s)"
    number = _parse_with(parse_duration, value, path, key, allowed)
    if number < 0 or (number == 0 and not allow_zero):
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}")
    return number


def _parse_int(value: object, path: str, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(
            path, key, f"expected a whole number from {low} to {high}; found {_describe(value)}"
        )
    return value


def _parse_probe(value: object, path: str) -> ReadinessProbe | None:
    key = "readiness_probe"
    if value is None:
        return None
    if isinstance(value, str):
        return ReadinessProbe(path=_parse_probe_path(value, path, key))
    raw = _mapping(value, path, key, "path, initial_delay_seconds, timeout_seconds (or a path)")
    _check_keys(raw, PROBE_KEYS, path, f"{key}.")
    probe = ReadinessProbe()
    delay = raw.get("initial_delay_seconds")
    timeout = raw.get("timeout_seconds")
    return ReadinessProbe(
        path=probe.path if raw.get("path") is None else _parse_probe_path(raw["path"], path),
        initial_delay_seconds=(
            probe.initial_delay_seconds
            if delay is None
            else _parse_seconds(delay, path, f"{key}.initial_delay_seconds", allow_zero=True)
        ),
        timeout_seconds=(
            probe.timeout_seconds
            if timeout is None
            else _parse_seconds(timeout, path, f"{key}.timeout_seconds", allow_zero=False)
        ),
    )


def _parse_probe_path(value: object, path: str, key: str = "readiness_probe.path") -> str:
    allowed = "a URL path starting with '/', such as /health, without spaces"
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or len(value) > MAX_PROBE_PATH_CHARS
        or any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value)
    ):
        raise SpecError(path, key, f"expected {allowed}; found {_describe(value)}")
    return _check_text(value, path, key)
