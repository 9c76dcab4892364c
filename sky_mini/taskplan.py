"""From ``jobs launch`` arguments to a checked plan: every task of the file (or the command)
with flags applied, null envs/secrets filled, infra chosen, ``any_of`` and GPUs resolved
against what the machine can ever give. ``--dry-run`` prints it; a launch records it.

Nothing here records anything or starts a server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sky_mini.errors import UsageError

YAML_SUFFIXES = (".yaml", ".yml")
DEFAULT_INFRA = "local"


class Plan:
    """What a launch will record: the tasks in order, and how they relate. (A plain class:
    a dataclass would cost ~1-2 ms to build on the cron path.)"""

    def __init__(
        self,
        source: str,
        tasks: list[Any],  # sky_mini.spec.TaskSpec, resolved
        infras: list[str],
        pipeline: str | None = None,
        parallel: bool = False,
        first_document: int = 1,
    ) -> None:
        self.source = source
        self.tasks = tasks
        self.infras = infras
        self.pipeline = pipeline
        self.parallel = parallel
        self.first_document = first_document
        self.gpus: list[str] = []
        self.gpu_source: str | None = None
        self.primary: tuple[bool, ...] = ()  # job group: per task, a primary task?
        self.delays: tuple[float, ...] = ()  # job group: per task, termination_delay (s)

    def group_fields(self, index: int, group_id: int) -> dict[str, Any] | None:
        """The record's ``group`` for task ``index`` of a job group (None otherwise)."""
        if not self.parallel:
            return None
        return {
            "id": group_id,
            "size": len(self.tasks),
            "primary": self.primary[index] if self.primary else True,
            "termination_delay": self.delays[index] if self.delays else 0.0,
        }

    @property
    def ignored(self) -> list[str]:
        seen: dict[str, None] = {}
        for index, task in enumerate(self.tasks):
            suffix = f" (document {index + self.first_document})" if len(self.tasks) > 1 else ""
            for key in task.ignored:
                seen[key + suffix] = None
        return list(seen)


def parse_secret_flags(items: Sequence[str]) -> dict[str, str]:
    """``--secret K=V``, or ``--secret K`` to take the value from this environment."""
    from sky_mini.spec import ENV_NAME_RE

    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not ENV_NAME_RE.fullmatch(key):
            raise UsageError(f"--secret {key!r}: not a valid variable name (e.g. API_KEY)")
        if not sep:
            if key not in os.environ:
                raise UsageError(
                    f"--secret {key}: {key} is not set in your environment; "
                    f"give --secret {key}=VALUE or export it"
                )
            value = os.environ[key]
        if "\0" in value:
            raise UsageError(f"--secret {key}: the value must not contain a NUL character")
        values[key] = value
    return values


def build_plan(
    args: Sequence[str],
    *,
    name: str | None,
    envs: Sequence[str],
    secrets: Sequence[str] = (),
    cpus: str | None,
    memory: str | None,
    timeout: str | None,
    infra: str | None = None,
    retries: int | None = None,
    create_home: bool = True,
) -> Plan:
    from sky_mini import spec

    if not args:
        raise UsageError(
            "nothing to run: give a task file (sky-mini jobs launch task.yaml) or a command "
            "after -- (sky-mini jobs launch -- echo hello)"
        )
    is_file = len(args) == 1 and args[0].endswith(YAML_SUFFIXES) and "--" not in sys.argv[1:]
    if is_file:
        source = args[0]
        loaded = spec.load_task_file(
            source, infra_given=infra is not None, cache_dir=yaml_cache_dir(create_home)
        )
    else:
        source = "command line"
        loaded = spec.TaskFile((spec.task_from_command(list(args), name=name, cwd=os.getcwd()),))
    env_values = spec.parse_env_assignments(list(envs))
    secret_values = parse_secret_flags(secrets)
    several = len(loaded.tasks) > 1 or loaded.pipeline is not None
    tasks = []
    for index, task in enumerate(loaded.tasks):
        where = f"{source} (document {index + loaded.first_document})" if several else source
        task = spec.apply_overrides(
            task,
            name=None if several else name,
            envs=env_values,
            secrets=secret_values,
            cpus=cpus,
            memory=memory,
            timeout=timeout,
            infra=infra,
            retries=retries,
            source=source,
        )
        spec.check_required(task, where)
        tasks.append(task)
    plan = Plan(
        source=source,
        tasks=tasks,
        infras=[],
        pipeline=(name or loaded.pipeline) if several else None,
        parallel=loaded.parallel,
        first_document=loaded.first_document,
    )
    plan.primary, plan.delays = loaded.primary, loaded.delays
    resolve_tasks(plan, create_home=create_home)
    return plan


def yaml_cache_dir(create_home: bool) -> str | None:
    """Where parsed task files are kept, unless that would create the home (--dry-run)."""
    from sky_mini import client

    paths = client.open_home(create=create_home)
    if not create_home and not os.path.isdir(paths.home):
        return None
    return paths.yaml_cache_dir


def resolve_tasks(plan: Plan, *, create_home: bool) -> None:
    """Choose each task's infra and resources; refuse what the place can never give."""
    from sky_mini import spec

    machine: Any = None
    slurm: Any = None  # one sinfo answer for every Slurm task of the launch
    default: str | None = None
    for index, task in enumerate(plan.tasks):
        infra = task.resources.infra
        if infra is None:
            if default is None:
                default = configured_infra(create_home)
            infra = default
        where = plan.source
        if len(plan.tasks) > 1 or plan.pipeline is not None:
            where = f"{plan.source} (document {index + plan.first_document})"
        target = None
        if infra == "local":
            if machine is None:
                machine = local_machine(plan, task_wants_gpus(plan.tasks), create_home)
            target = machine
        plan.tasks[index] = spec.resolve(task, where, target, infra)
        if infra != "local":
            if slurm is None:
                from sky_mini.server.backends.slurm.capacity import PartitionCheck

                slurm = PartitionCheck(configured_partition(create_home))
            slurm.check(plan.tasks[index], where, infra)
        plan.infras.append(infra)


def configured_infra(create_home: bool) -> str:
    """Config ``jobs.infra`` (where a task that names no infra runs), else local."""
    return configured("infra", create_home) or DEFAULT_INFRA


def configured_partition(create_home: bool) -> str | None:
    return configured("slurm_partition", create_home)


def configured(name: str, create_home: bool) -> str | None:
    """A setting the submit path needs: as the running server published it when that is
    what load_settings would give here (sky_mini.capacity), else from load_settings."""
    from sky_mini import client
    from sky_mini.capacity import read_setting

    paths = client.open_home(create=create_home)
    known, value = read_setting(paths.server_dir, paths.config, name)
    if known:
        return value
    from sky_mini.config import load_settings

    value = getattr(load_settings(paths), name)
    return value if isinstance(value, str) else None


def task_wants_gpus(tasks: Sequence[Any]) -> bool:
    return any(c.gpus for t in tasks for c in (t.candidates or (t.resources,)))


def local_machine(plan: Plan, want_gpus: bool, create_home: bool) -> Any:
    """What this machine can ever give a job (as the server will compute it)."""
    from sky_mini import client, spec
    from sky_mini.capacity import read_published

    paths = client.open_home(create=create_home)
    # The running server's detection, when it is what ours would be (sky_mini.capacity).
    published = read_published(paths.server_dir, paths.config)
    cpus, memory = published if published is not None else detect_machine(paths)
    usable = max(memory - SERVER_RESERVE_MEMORY_BYTES, memory // 2)
    gpus: list[str] = []
    if want_gpus:
        from sky_mini.gpus import GpuOverrideError, detect_gpus

        try:
            gpus, plan.gpu_source = detect_gpus()
        except GpuOverrideError as exc:
            raise UsageError(str(exc)) from None
        plan.gpus = gpus
    return spec.Machine(cpus=cpus, memory_bytes=usable, gpus=tuple(gpus))


SERVER_RESERVE_MEMORY_BYTES = 256 * 1024**2
"""As sky_mini.resources' (kept here so the submit path need not import that module)."""


def detect_machine(paths: Any) -> tuple[float, int]:
    """(cpus, memory_bytes) this process may use: overrides, config, cgroups, host."""
    from sky_mini.config import load_settings
    from sky_mini.resources import detect_resources

    settings = load_settings(paths)
    detected = detect_resources(
        config_cpus=settings.cpus,
        config_memory_bytes=settings.memory_bytes,
        host_memory=read_meminfo_total,
    )
    return detected.cpus, detected.memory_bytes


def read_meminfo_total() -> int:
    """MemTotal without importing psutil (this runs on the cron-facing submit path)."""
    with open("/proc/meminfo", "rb") as handle:
        for line in handle:
            if line.startswith(b"MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def with_name(task: Any, fallback: str) -> Any:
    return task if task.name else replace(task, name=fallback)


# --------------------------------------------------------------------------- rendering


def note_ignored(plan: Plan) -> None:
    """The one stderr line naming the keys that have no effect here."""
    if plan.ignored:
        print(
            "sky-mini: note: ignored (cloud-only, or overridden by --infra): "
            + ", ".join(plan.ignored),
            file=sys.stderr,
        )


def render_plan(plan: Plan) -> str:
    """The ``--dry-run`` text: one block per task."""
    lines: list[str] = []
    count = len(plan.tasks)
    if plan.pipeline is not None or count > 1:
        how = "started together (job group)" if plan.parallel else "run one after another"
        title = f"pipeline {plan.pipeline!r}" if plan.pipeline else "pipeline"
        lines.append(f"Plan for {plan.source}: {title}, {count} tasks, {how}.")
    else:
        lines.append(f"Plan for {plan.source}:")
    for index, (task, infra) in enumerate(zip(plan.tasks, plan.infras, strict=True)):
        label = task.name or default_name(task)
        lines.append(f"Task {index + 1}: {label}" if count > 1 else f"  name:        {label}")
        lines += _task_lines(task, infra, plan)
        if plan.parallel and plan.primary and not all(plan.primary):
            role = (
                "primary"
                if plan.primary[index]
                else (f"auxiliary: stopped {plan.delays[index]:g}s after every primary task ended")
            )
            lines.append(f"  role:        {role}")
    lines.append("Dry run: nothing was recorded and no server was started.")
    return "\n".join(lines)


def _task_lines(task: Any, infra: str, plan: Plan) -> list[str]:
    res = task.resources
    out = [f"  infra:       {infra}", f"  resources:   {res.describe()}"]
    if task.num_nodes != 1:
        out.append(f"  num_nodes:   {task.num_nodes}")
    if res.gpus:
        where = ", ".join(plan.gpus) if plan.gpus else "-"
        out.append(
            f"  GPUs:        {res.gpus:g} x {res.accelerator or 'any'}"
            + (f" (machine: {where}, from {plan.gpu_source})" if infra == "local" else "")
        )
    if task.workdir:
        out.append(f"  workdir:     {task.workdir}")
    if task.envs:
        out.append(f"  envs:        {', '.join(sorted(task.envs))}")
    if task.secret_names:
        out.append(f"  secrets:     {', '.join(task.secret_names)} (values not shown)")
    for dest, src in task.file_mounts.items():
        out.append(f"  file_mount:  {dest} -> {src} (symlink, made before setup)")
    if task.retries is not None:
        out.append(f"  retries:     {task.retries} (job_recovery.max_restarts_on_errors)")
    if task.ignored:
        out.append(f"  ignored:     {', '.join(task.ignored)}")
    for phase in ("setup", "run"):
        command = getattr(task, phase)
        if command is None:
            continue
        first, *rest = command.rstrip("\n").split("\n")
        out.append(f"  {phase + ':':<12} {first}")
        out += [f"               {line}" for line in rest]
    return out


def default_name(task: Any) -> str:
    text = (task.run or task.setup or "").strip()
    first = text.splitlines()[0] if text else "job"
    return first[:40]


def check_fits_machine(task: Any, source: str) -> None:
    """Reject at submit what this machine can never give (exit 2, nothing recorded)."""
    from sky_mini import spec

    machine = local_machine(Plan(source=source, tasks=[], infras=[]), False, True)
    spec.check_fits(
        task.resources,
        machine_cpus=machine.cpus,
        machine_memory_bytes=machine.memory_bytes,
        path=source,
    )
