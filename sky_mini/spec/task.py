"""Task specs: SkyPilot's task YAML (one task, a pipeline, or a job group) or a command.

A file is read once (see :mod:`sky_mini.spec.yamlio`); each document is checked key by key.
What depends on where the job runs (``any_of`` choices, GPUs, ``num_nodes``) is settled by
:func:`resolve` once the infra and the machine are known.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from sky_mini.errors import SpecError
from sky_mini.lazyre import lazy
from sky_mini.spec.frozen import Frozen, assign
from sky_mini.spec.resources import (
    INFRA_HINT,
    Machine,
    ResourceChoice,
    ResourceSpec,
    check_fits,
    choose,
    fits,
    parse_cpus,
    parse_infra,
    parse_memory,
    parse_resources,
)
from sky_mini.spec.values import (
    COMMAND_ALLOWED,
    ENV_NAME_RE,
    bad_env_name,
    check_keys,
    check_text,
    describe,
    env_value,
    expand_env_refs,
    mapping,
    parse_command,
    parse_env_block,
    parse_int,
    parse_name,
    parse_seconds,
    parse_timeout,
    parse_workdir,
    yaml_dir,
)
from sky_mini.spec.yamlio import load_documents, require_mapping

TASK_KEYS = (
    "name",
    "workdir",
    "num_nodes",
    "envs",
    "secrets",
    "file_mounts",
    "setup",
    "run",
    "resources",
)
# Top-level SkyPilot keys with no meaning for a job here: accepted, named as ignored.
IGNORED_TASK_KEYS = (
    "config",
    "volumes",
    "volume_mounts",
    "event_callback",
    "experimental",
    "inputs",
    "outputs",
    "file_mounts_mapping",
    "service",
    "pool",
    "_metadata",
)
HEADER_KEYS = ("name", "execution", "primary_tasks", "termination_delay")
MAX_RETRIES = 100
MAX_NODES = 1024
_BUCKET_RE = lazy(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass(init=False, repr=False, eq=False)  # frozen and compared via Frozen (spec.frozen)
class TaskSpec(Frozen):
    """A job to run: ``setup`` then ``run`` in ``workdir`` with ``envs`` exported.

    ``run``/``setup`` hold the commands with ``${VAR}`` already expanded from ``envs``
    (never from secrets: their values must not land in a record). ``run`` is None for a
    setup-only task. Fields after ``file_mounts`` are not serialised: templates for
    re-expansion after ``--env``, secret values (written to a 0600 side file at submit),
    the names that must still be given, the ``any_of`` candidates and ignored keys.
    """

    run: str | None
    name: str | None = None
    setup: str | None = None
    workdir: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    num_nodes: int = 1
    secret_names: tuple[str, ...] = ()
    file_mounts: dict[str, str] = field(default_factory=dict)
    run_template: str | None = field(default=None, repr=False, compare=False)
    setup_template: str | None = field(default=None, repr=False, compare=False)
    secrets: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    required_envs: tuple[str, ...] = field(default=(), compare=False)
    candidates: tuple[ResourceSpec, ...] = field(default=(), repr=False, compare=False)
    ignored: tuple[str, ...] = field(default=(), compare=False)
    retries: int | None = field(default=None, compare=False)

    def __init__(
        self,
        run: str | None,
        name: str | None = None,
        setup: str | None = None,
        workdir: str | None = None,
        envs: dict[str, str] | None = None,
        resources: ResourceSpec | None = None,
        num_nodes: int = 1,
        secret_names: tuple[str, ...] = (),
        file_mounts: dict[str, str] | None = None,
        run_template: str | None = None,
        setup_template: str | None = None,
        secrets: dict[str, str] | None = None,
        required_envs: tuple[str, ...] = (),
        candidates: tuple[ResourceSpec, ...] = (),
        ignored: tuple[str, ...] = (),
        retries: int | None = None,
    ) -> None:
        assign(self, locals())  # None for envs/resources/file_mounts/secrets: a fresh default

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "run": self.run,
            "setup": self.setup,
            "workdir": self.workdir,
            "envs": dict(self.envs),
            "resources": self.resources.to_json(),
        }
        if self.num_nodes != 1:
            data["num_nodes"] = self.num_nodes
        if self.secret_names:
            data["secrets"] = list(self.secret_names)  # names only, never values
        if self.file_mounts:
            data["file_mounts"] = dict(self.file_mounts)
        if self.retries is not None:
            data["retries"] = self.retries
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Rebuild from :meth:`to_json` output (trusted state, not user input)."""
        return cls(
            run=_optional_str(data.get("run")),
            name=_optional_str(data.get("name")),
            setup=_optional_str(data.get("setup")),
            workdir=_optional_str(data.get("workdir")),
            envs={str(k): str(v) for k, v in (data.get("envs") or {}).items()},
            resources=ResourceSpec.from_json(data.get("resources") or {}),
            num_nodes=int(data.get("num_nodes") or 1),
            secret_names=tuple(str(s) for s in data.get("secrets") or ()),
            file_mounts={str(k): str(v) for k, v in (data.get("file_mounts") or {}).items()},
            retries=None if data.get("retries") is None else int(data["retries"]),
        )


class TaskFile(NamedTuple):
    """What a task file holds: one task, a pipeline (run in order), or a job group
    (``execution: parallel``: started together)."""

    tasks: tuple[TaskSpec, ...]
    pipeline: str | None = None
    parallel: bool = False
    first_document: int = 1  # the document number of the first task (2 after a header)
    primary: tuple[bool, ...] = ()  # job group: per task, primary (SkyPilot primary_tasks)
    delays: tuple[float, ...] = ()  # job group: per task, termination_delay in seconds


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- loading


def load_task_file(
    path: str, *, infra_given: bool = False, cache_dir: str | None = None
) -> TaskFile:
    """Load every document of a task YAML. A first document holding only ``name`` (and for
    a job group ``execution``/``primary_tasks``/``termination_delay``) is a header;
    otherwise every document is a task. Errors name the document when there are several.
    ``cache_dir``: see :func:`sky_mini.spec.yamlio.load_documents` (checks run either way)."""
    documents = load_documents(path, "a task", cache_dir)
    header: dict[Any, Any] | None = None
    first = documents[0]
    if len(documents) > 1 and isinstance(first, dict) and set(first) <= set(HEADER_KEYS):
        header = first
        documents = documents[1:]
    many = len(documents) > 1 or header is not None
    tasks: list[TaskSpec] = []
    for index, document in enumerate(documents):
        number = index + (2 if header is not None else 1)
        source = f"{path} (document {number})" if many else path
        if document is None and many:
            continue  # an empty document between two '---'
        data = require_mapping(document, source, "a task")
        tasks.append(_load_document(data, path, source, infra_given))
    if not tasks:
        raise SpecError(path, None, "the pipeline has no task; add documents after the header")
    if header is None:
        return TaskFile(tuple(tasks))
    return _with_header(tuple(tasks), header, path)


def load_task(path: str) -> TaskSpec:
    """Load a file that must hold exactly one task."""
    loaded = load_task_file(path)
    if len(loaded.tasks) != 1:
        raise SpecError(path, None, f"holds {len(loaded.tasks)} tasks; expected one")
    return loaded.tasks[0]


def _with_header(tasks: tuple[TaskSpec, ...], header: dict[Any, Any], path: str) -> TaskFile:
    source = f"{path} (document 1)"
    name = parse_name(header.get("name"), source, "name")
    execution = header.get("execution", "serial")
    if execution not in ("serial", "parallel", None):
        raise SpecError(
            source, "execution", f"expected serial or parallel; found {describe(execution)}"
        )
    parallel = execution == "parallel"
    for key in ("primary_tasks", "termination_delay"):
        if header.get(key) is not None and not parallel:
            raise SpecError(
                source, key, "only a job group has it; add 'execution: parallel' to the header"
            )
    if not parallel:
        return TaskFile(tasks, pipeline=name, first_document=2)
    primary, delays = _group_roles(tasks, header, source)
    return TaskFile(
        tasks, pipeline=name, parallel=True, first_document=2, primary=primary, delays=delays
    )


def _group_roles(
    tasks: tuple[TaskSpec, ...], header: dict[Any, Any], source: str
) -> tuple[tuple[bool, ...], tuple[float, ...]]:
    """SkyPilot's ``primary_tasks`` (names; unset: every task is primary) and
    ``termination_delay`` (one duration, or ``{default: D, NAME: D}``): per task, whether it
    is primary and how long an auxiliary task may keep running once every primary ended."""
    names = [t.name for t in tasks]
    raw_primary = header.get("primary_tasks")
    raw_delay = header.get("termination_delay")
    if raw_primary is None and raw_delay is None:
        return tuple(True for _ in tasks), tuple(0.0 for _ in tasks)
    seen: set[str] = set()
    for number, task_name in enumerate(names, start=2):
        if task_name is None:
            raise SpecError(
                source,
                "primary_tasks" if raw_primary is not None else "termination_delay",
                f"every task of the job group needs a unique 'name' (document {number} has none)",
            )
        if task_name in seen:
            raise SpecError(source, "name", f"two tasks of the job group are named {task_name!r}")
        seen.add(task_name)
    listing = ", ".join(str(n) for n in names)
    primary_names: set[str] = set(str(n) for n in names)
    if raw_primary is not None:
        items = [raw_primary] if isinstance(raw_primary, str) else raw_primary
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise SpecError(
                source,
                "primary_tasks",
                f"expected a list of task names such as [{names[0]}]; found "
                f"{describe(raw_primary)}",
            )
        unknown = [i for i in items if i not in seen]
        if unknown:
            raise SpecError(
                source, "primary_tasks", f"no task is named {unknown[0]!r}; the tasks: {listing}"
            )
        primary_names = set(items)
    delays: dict[str, float] = {}
    default = 0.0
    if isinstance(raw_delay, dict):
        for key, value in raw_delay.items():
            if key != "default" and key not in seen:
                raise SpecError(
                    source,
                    f"termination_delay.{key}",
                    f"no task is named {key!r}; use 'default' or one of: {listing}",
                )
            seconds = parse_seconds(value, source, f"termination_delay.{key}", allow_zero=True)
            if key == "default":
                default = seconds
            else:
                delays[str(key)] = seconds
    elif raw_delay is not None:
        default = parse_seconds(raw_delay, source, "termination_delay", allow_zero=True)
    return (
        tuple(str(n) in primary_names for n in names),
        tuple(delays.get(str(n), default) for n in names),
    )


def _load_document(
    data: dict[Any, Any], path: str, source: str, infra_given: bool = False
) -> TaskSpec:
    check_keys(data, (*TASK_KEYS, *IGNORED_TASK_KEYS), source, "")
    ignored = [k for k in IGNORED_TASK_KEYS if data.get(k) is not None]
    envs, required = parse_env_block(data.get("envs"), source, "envs")
    secrets, required_secrets = parse_env_block(data.get("secrets"), source, "secrets")
    both = sorted((set(envs) | set(required)) & (set(secrets) | set(required_secrets)))
    if both:
        raise SpecError(source, f"secrets.{both[0]}", "is also in envs; give it in one of them")
    run = parse_command(data.get("run"), source, "run", required=False)
    setup = parse_command(data.get("setup"), source, "setup", required=False)
    if run is None and setup is None:
        what = "missing" if data.get("run") is None else "is empty"
        raise SpecError(source, "run", f"{what}; give {COMMAND_ALLOWED} (or a setup)")
    base = yaml_dir(path)
    workdir = parse_workdir(data.get("workdir"), source, "workdir", base)
    choice: ResourceChoice = parse_resources(
        data.get("resources"), source, "resources", infra_given=infra_given
    )
    num_nodes = (
        1
        if data.get("num_nodes") is None
        else parse_int(data["num_nodes"], source, "num_nodes", 1, MAX_NODES)
    )
    mounts = _parse_file_mounts(data.get("file_mounts"), source, envs, base, workdir or base)
    return TaskSpec(
        run=None if run is None else expand_env_refs(run, envs),
        name=parse_name(data.get("name"), source, "name"),
        setup=None if setup is None else expand_env_refs(setup, envs),
        workdir=workdir,
        envs=envs,
        resources=choice.candidates[0],
        num_nodes=num_nodes,
        secret_names=tuple([*secrets, *required_secrets]),
        file_mounts=mounts,
        run_template=run,
        setup_template=setup,
        secrets=secrets,
        required_envs=tuple([*required, *(f"secret:{n}" for n in required_secrets)]),
        candidates=choice.candidates,
        ignored=tuple([*ignored, *choice.ignored]),
        retries=choice.retries,
    )


def _parse_file_mounts(
    value: object, source: str, envs: Mapping[str, str], base: str, dest_base: str
) -> dict[str, str]:
    """``{destination: local source}``; destinations are made absolute (``~`` expanded,
    relative ones under the workdir), sources must exist (relative to the YAML file).
    Buckets and storage objects are refused: nothing here can mount them."""
    if value is None:
        return {}
    raw = mapping(value, source, "file_mounts", "destination: source pairs")
    mounts: dict[str, str] = {}
    for dest, src in raw.items():
        if not isinstance(dest, str) or not dest.strip():
            raise SpecError(
                source, "file_mounts", f"a destination must be a path; found {describe(dest)}"
            )
        key = f"file_mounts.{dest}"
        if isinstance(src, dict) or (isinstance(src, str) and _BUCKET_RE.match(src)):
            raise SpecError(
                source,
                key,
                "a bucket or storage object cannot be mounted here; copy the data to this "
                "machine and give its local path",
            )
        if not isinstance(src, str) or not src.strip():
            raise SpecError(source, key, f"expected a local path; found {describe(src)}")
        check_text(src, source, key)
        dest_path = os.path.expanduser(expand_env_refs(dest, envs))
        dest_path = os.path.normpath(os.path.join(dest_base, dest_path))
        src_path = os.path.normpath(
            os.path.join(base, os.path.expanduser(expand_env_refs(src, envs)))
        )
        if not os.path.exists(src_path):
            raise SpecError(
                source, key, f"{src!r} resolves to {src_path!r}, which does not exist; fix the path"
            )
        if os.path.realpath(dest_path) == os.path.realpath(src_path):
            continue  # already there: on one machine `~/f: ~/f` needs no link
        if os.path.exists(dest_path) and not os.path.islink(dest_path):
            raise SpecError(
                source,
                key,
                f"{dest_path!r} already exists; sky-mini links the source there and never "
                "replaces a real file or directory — pick another destination",
            )
        mounts[dest_path] = src_path
    return mounts


def task_from_command(argv: Sequence[str], *, name: str | None, cwd: str) -> TaskSpec:
    """Build a task for ``jobs launch -- CMD ARGS...``: ``run`` is ``shlex.join(argv)``,
    ``workdir`` is ``cwd`` made absolute. The command is taken literally: no ``${VAR}``
    expansion (the shell still expands variables the user did not quote)."""
    source = "command line"
    if not argv:
        raise SpecError(source, "--", "no command given; use 'jobs launch -- CMD ARGS...'")
    for index, arg in enumerate(argv):
        check_text(arg, source, f"argv[{index}]")
    workdir = os.path.abspath(cwd)
    if not os.path.isdir(workdir):
        raise SpecError(source, "cwd", f"working directory {workdir!r} is not a directory")
    return TaskSpec(
        run=shlex.join(argv),
        name=parse_name(name, source, "--name"),
        workdir=workdir,
    )


def apply_overrides(
    spec: TaskSpec,
    *,
    name: str | None = None,
    envs: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    cpus: float | str | None = None,
    memory: str | None = None,
    timeout: str | None = None,
    infra: str | None = None,
    retries: int | None = None,
    source: str = "command line",
) -> TaskSpec:
    """Return ``spec`` with CLI flags applied on top (flags win over the YAML).

    ``envs`` is merged into the spec's envs; a YAML task's ``${VAR}`` references are
    re-expanded with the merged values. Bad values raise SpecError naming the flag.
    """
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = parse_name(name, source, "--name")
    if envs:
        merged = dict(spec.envs)
        for key, value in envs.items():
            if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
                raise SpecError(source, "--env", bad_env_name(key))
            merged[key] = check_text(env_value(value, source, f"--env {key}"), source, "--env")
        changes["envs"] = merged
        changes["required_envs"] = tuple(n for n in spec.required_envs if n not in merged)
        if spec.run_template is not None:
            changes["run"] = expand_env_refs(spec.run_template, merged)
        if spec.setup_template is not None:
            changes["setup"] = expand_env_refs(spec.setup_template, merged)
    if secrets:
        given = {**spec.secrets, **secrets}
        changes["secrets"] = given
        changes["secret_names"] = tuple(dict.fromkeys([*spec.secret_names, *secrets]))
        required = changes.get("required_envs", spec.required_envs)
        changes["required_envs"] = tuple(
            n for n in required if not (n.startswith("secret:") and n[7:] in given)
        )
    resource_changes: dict[str, Any] = {}
    if cpus is not None:
        resource_changes["cpus"] = parse_cpus(cpus, source, "--cpus")
        resource_changes["cpus_defaulted"] = False
    if memory is not None:
        resource_changes["memory_bytes"] = parse_memory(memory, source, "--memory")
    if timeout is not None:
        resource_changes["timeout_seconds"] = parse_timeout(timeout, source, "--timeout")
    if infra is not None:
        resource_changes["infra"] = parse_infra(infra, source, "--infra")
    if retries is not None:
        changes["retries"] = parse_int(retries, source, "--retries", 0, MAX_RETRIES)
    if resource_changes:
        changes["resources"] = replace(spec.resources, **resource_changes)
        changes["candidates"] = tuple(
            replace(c, **resource_changes) for c in (spec.candidates or (spec.resources,))
        )
    return replace(spec, **changes) if changes else spec


def check_required(spec: TaskSpec, source: str) -> None:
    """Refuse a task whose null envs/secrets were not given at launch."""
    for name in spec.required_envs:
        if name.startswith("secret:"):
            secret = name[7:]
            raise SpecError(
                source,
                f"secrets.{secret}",
                f"has no value; give it at launch with --secret {secret}=VALUE "
                f"(or --secret {secret} to take it from your environment)",
            )
        raise SpecError(source, f"envs.{name}", f"has no value; give it with --env {name}=VALUE")


def resolve(spec: TaskSpec, source: str, machine: Machine | None, infra: str) -> TaskSpec:
    """Settle what depends on the place: the first ``any_of`` candidate that fits, and
    ``num_nodes``. ``machine`` None (Slurm) takes the first candidate; the cluster
    decides the rest."""
    if infra == "local" and spec.num_nodes > 1:
        raise SpecError(
            source,
            "num_nodes",
            f"{spec.num_nodes} nodes needs --infra slurm (this machine is one node); "
            "set num_nodes: 1 to run it here",
        )
    candidates = spec.candidates or (spec.resources,)
    if machine is not None and len(candidates) == 1 and not candidates[0].gpus:
        check_fits(
            candidates[0],
            machine_cpus=machine.cpus,
            machine_memory_bytes=machine.memory_bytes,
            path=source,
        )
    chosen = choose(candidates, machine)
    if chosen is None and machine is not None:
        shortfalls = "; ".join(f"needs {fits(c, machine)}" for c in candidates)
        key = "resources.accelerators" if any(c.gpus for c in candidates) else "resources"
        if not any(c.gpus for c in candidates):
            key = "resources.cpus" if candidates[0].cpus > machine.cpus else "resources.memory"
        raise SpecError(
            source,
            key,
            f"more than this machine can ever give: {shortfalls}; lower it, "
            f"set SKY_MINI_CPUS/SKY_MINI_MEMORY/SKY_MINI_GPUS, or {INFRA_HINT.split('; ')[0]}",
        )
    return replace(spec, resources=chosen or candidates[0])
