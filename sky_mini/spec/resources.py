"""``resources``: what a job reserves (cpus, memory, GPUs), where it runs (infra), and the
SkyPilot keys that cannot hold here (refused) or only tune a cloud VM (ignored, named)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from sky_mini.errors import SpecError
from sky_mini.gpus import gpu_matches
from sky_mini.lazyre import lazy
from sky_mini.spec.frozen import Frozen, assign
from sky_mini.spec.values import check_keys, describe, mapping, parse_timeout, parse_with
from sky_mini.units import format_size, parse_size

MIN_MEMORY_BYTES = 4 * 1024 * 1024
GIB = 1024**3
INFRA_HINT = "use --infra local or --infra slurm to run it here"

# Keys that say where or on what to run, and cannot hold on this machine or Slurm.
PLACEMENT_KEYS = ("cloud", "region", "zone", "instance_type", "image_id")
# Keys that only tune a cloud VM: accepted, named once on stderr as ignored.
VM_ONLY_KEYS = (
    "use_spot",
    "spot_recovery",
    "disk_size",
    "disk_tier",
    "network_tier",
    "ports",
    "labels",
    "autostop",
    "volumes",
    "accelerator_args",
    "priority",
    "_docker_login_config",
    "_is_image_managed",
    "_requires_fuse",
    "_cluster_config_overrides",
    "_no_missing_accel_warnings",
)
RESOURCE_KEYS = (
    "cpus",
    "memory",
    "timeout",
    "infra",
    "accelerators",
    "job_recovery",
    "any_of",
    "ordered",
    *PLACEMENT_KEYS,
    *VM_ONLY_KEYS,
)
CLOUDS = (
    "aws", "gcp", "azure", "lambda", "ibm", "oci", "scp", "runpod", "vast", "vsphere",
    "cudo", "fluidstack", "paperspace", "do", "nebius", "hyperbolic", "seeweb",
    "primeintellect", "shadeform", "coreweave", "kubernetes", "k8s", "ssh",
)  # fmt: skip
_INFRA_RE = lazy(r"(local|slurm(/[A-Za-z0-9_.-]+)?)")
_NUMBER_PLUS_RE = lazy(r"^\s*(\d+(?:\.\d+)?)\s*(\+?)\s*$")
_MEMORY_X_RE = lazy(r"^\s*(\d+(?:\.\d+)?)\s*x\s*(\+?)\s*$", re.IGNORECASE)
_ACCEL_RE = lazy(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(?::\s*(\d+(?:\.\d+)?))?\s*$")


@dataclass(init=False, repr=False, eq=False)  # frozen and compared via Frozen (spec.frozen)
class ResourceSpec(Frozen):
    """What a job or replica reserves and may use, and where it runs.

    ``infra`` None means the configured default (``jobs.infra``, else local).
    ``accelerator``/``gpus``: the GPU type (None = any NVIDIA GPU) and how many
    (fractions share one device).
    """

    cpus: float = 1.0
    memory_bytes: int | None = None
    timeout_seconds: float | None = None
    infra: str | None = None
    accelerator: str | None = None
    gpus: float = 0.0
    # True while nobody asked for ``cpus``: then the reservation is min(1, machine CPUs),
    # resolved where the machine is known (submit-time fit check, server admission).
    cpus_defaulted: bool = True

    def __init__(
        self,
        cpus: float = 1.0,
        memory_bytes: int | None = None,
        timeout_seconds: float | None = None,
        infra: str | None = None,
        accelerator: str | None = None,
        gpus: float = 0.0,
        cpus_defaulted: bool = True,
    ) -> None:
        assign(self, locals())

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "cpus": self.cpus,
            "cpus_defaulted": self.cpus_defaulted,
            "memory_bytes": self.memory_bytes,
            "timeout_seconds": self.timeout_seconds,
        }
        if self.infra is not None:
            data["infra"] = self.infra
        if self.gpus:
            data["accelerator"] = self.accelerator
            data["gpus"] = self.gpus
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResourceSpec:
        """Rebuild from :meth:`to_json` output; missing keys (older records) take defaults."""
        memory = data.get("memory_bytes")
        timeout = data.get("timeout_seconds")
        infra = data.get("infra")
        accelerator = data.get("accelerator")
        return cls(
            cpus=float(data.get("cpus", 1.0)),
            # Records written before this key existed: a recorded cpus was a request.
            cpus_defaulted=bool(data.get("cpus_defaulted", "cpus" not in data)),
            memory_bytes=None if memory is None else int(memory),
            timeout_seconds=None if timeout is None else float(timeout),
            infra=None if infra is None else str(infra),
            accelerator=None if accelerator is None else str(accelerator),
            gpus=float(data.get("gpus") or 0.0),
        )

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU"]
        parts.append(
            "no memory limit" if self.memory_bytes is None else format_size(self.memory_bytes)
        )
        if self.gpus:
            parts.append(f"{self.gpus:g} {self.accelerator or 'GPU'}")
        if self.timeout_seconds is not None:
            parts.append(f"timeout {self.timeout_seconds:g}s")
        return ", ".join(parts)


# NamedTuples, not dataclasses: building a dataclass costs ~1-2 ms at import, and this
# module is on the cron path (`jobs launch --async`).
class ResourceChoice(NamedTuple):
    """A ``resources`` block as written: the candidates in order (any_of / ordered /
    accelerator alternatives expand to several), the ignored keys and the retries."""

    candidates: tuple[ResourceSpec, ...] = (ResourceSpec(),)
    ignored: tuple[str, ...] = ()
    retries: int | None = None


class Machine(NamedTuple):
    """What the chosen place can ever give (for fit checks at submit)."""

    cpus: float
    memory_bytes: int
    gpus: tuple[str, ...] = ()


def parse_infra(value: object, source: str, key: str) -> str:
    """``local``, ``slurm`` or ``slurm/<partition>``; a cloud or Kubernetes is refused."""
    allowed = "local, slurm or slurm/<partition>"
    if not isinstance(value, str) or not value.strip():
        raise SpecError(source, key, f"expected {allowed}; found {describe(value)}")
    text = value.strip()
    if _INFRA_RE.fullmatch(text):
        return text
    head = text.split("/", 1)[0].lower()
    if head in CLOUDS or head == "*":
        what = "Kubernetes" if head in ("kubernetes", "k8s") else f"the cloud {text!r}"
        raise SpecError(source, key, f"{what} is not available here; {INFRA_HINT}")
    raise SpecError(source, key, f"unknown infra {text!r}; expected {allowed} ({INFRA_HINT})")


def parse_resources(
    value: object, path: str, key: str, *, infra_given: bool = False
) -> ResourceChoice:
    """A task's ``resources`` (also for services, which reject what they cannot use).

    ``infra_given``: ``--infra`` was given, so the file's infra and placement keys
    (cloud, region, ...) are overridden: listed as ignored instead of refused."""
    if value is None:
        return ResourceChoice()
    raw = mapping(value, path, key, "cpus, memory, accelerators, infra, timeout")
    check_keys(raw, RESOURCE_KEYS, path, f"{key}.")
    overridden = (*PLACEMENT_KEYS, "infra") if infra_given else ()
    ignored = [
        f"{key}.{name}" for name in (*VM_ONLY_KEYS, *overridden) if raw.get(name) is not None
    ]
    raw = {k: v for k, v in raw.items() if k not in overridden}
    retries = _parse_job_recovery(raw.get("job_recovery"), path, f"{key}.job_recovery")
    base = {k: v for k, v in raw.items() if k not in ("any_of", "ordered")}
    alternatives: list[tuple[str, dict[Any, Any]]] = []
    for group in ("any_of", "ordered"):
        items = raw.get(group)
        if items is None:
            continue
        if alternatives:
            raise SpecError(path, f"{key}.{group}", "give any_of or ordered, not both")
        if not isinstance(items, list) or not items:
            raise SpecError(
                path, f"{key}.{group}", f"expected a list of resources; found {describe(items)}"
            )
        for index, item in enumerate(items):
            where = f"{key}.{group}[{index}]"
            sub = mapping(item, path, where, "resources keys")
            check_keys(sub, RESOURCE_KEYS, path, f"{where}.")
            for nested in ("any_of", "ordered"):
                if nested in sub:
                    raise SpecError(path, f"{where}.{nested}", "cannot be nested")
            ignored += [
                f"{where}.{n}" for n in (*VM_ONLY_KEYS, *overridden) if sub.get(n) is not None
            ]
            sub = {k: v for k, v in sub.items() if k not in overridden}
            alternatives.append((where, {**base, **sub}))
    if not alternatives:
        alternatives = [(key, base)]
    candidates: list[ResourceSpec] = []
    for where, merged in alternatives:
        candidates += _parse_one(merged, path, where)
    return ResourceChoice(tuple(candidates), tuple(ignored), retries)


def _parse_one(raw: Mapping[Any, Any], path: str, key: str) -> list[ResourceSpec]:
    infra = None if raw.get("infra") is None else parse_infra(raw["infra"], path, f"{key}.infra")
    for name in PLACEMENT_KEYS:
        if raw.get(name) is not None:
            raise SpecError(
                path,
                f"{key}.{name}",
                f"{name} {raw[name]!r} picks a cloud machine, which does not exist here; "
                f"remove it and {INFRA_HINT}",
            )
    cpus = 1.0 if raw.get("cpus") is None else parse_cpus(raw["cpus"], path, f"{key}.cpus")
    memory = raw.get("memory")
    memory_bytes = None if memory is None else parse_memory(memory, path, f"{key}.memory", cpus)
    timeout = raw.get("timeout")
    base = ResourceSpec(
        cpus=cpus,
        cpus_defaulted=raw.get("cpus") is None,
        memory_bytes=memory_bytes,
        timeout_seconds=None if timeout is None else parse_timeout(timeout, path, f"{key}.timeout"),
        infra=infra,
    )
    accelerators = parse_accelerators(raw.get("accelerators"), path, f"{key}.accelerators")
    if not accelerators:
        return [base]
    return [replace(base, accelerator=name, gpus=count) for name, count in accelerators]


def _as_float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def parse_cpus(value: object, path: str, key: str) -> float:
    """``N`` or ``N+`` (at least N: N is reserved), N > 0."""
    allowed = "a number greater than 0, or N+ for at least N (such as 1, 0.5, 4 or 2+)"
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = _as_float(value)
    elif isinstance(value, str):
        text = value.strip()
        text = text[:-1].rstrip() if text.endswith("+") else text
        try:
            number = float(text)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    return number


def parse_memory(value: object, path: str, key: str, cpus: float = 1.0) -> int:
    """A bare number, ``N+`` (GB, as in SkyPilot), ``Nx`` (N GB per CPU), or a size with a
    unit (512M, 2GB, 1.5Gi; a trailing + is allowed)."""
    allowed = (
        f"GB as a number or N+ (8, 8+), N GB per CPU (4x), or a size of at least "
        f"{format_size(MIN_MEMORY_BYTES)} such as 512M, 2GB or 1.5Gi"
    )
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = _as_float(value) * GIB
    elif isinstance(value, str):
        plus = _NUMBER_PLUS_RE.match(value)
        times = _MEMORY_X_RE.match(value)
        if plus:
            number = float(plus.group(1)) * GIB
        elif times:
            number = float(times.group(1)) * cpus * GIB
        else:
            text = value.strip()
            text = text[:-1] if text.endswith("+") else text
            number = parse_with(parse_size, text, path, key, allowed)
    if number is None or not math.isfinite(number) or number < MIN_MEMORY_BYTES:
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    return int(number)


def parse_accelerators(value: object, path: str, key: str) -> list[tuple[str, float]]:
    """``NAME``, ``NAME:N`` (N may be fractional), ``{NAME: N}``, a set ``{A:1, B:1}`` or a
    list (alternatives in order). An empty result means no GPU."""
    if value is None:
        return []
    items: list[tuple[object, str]] = []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):
            items = [(part, key) for part in text[1:-1].split(",") if part.strip()]
        else:
            items = [(text, key)]
    elif isinstance(value, dict):
        for name, count in value.items():
            items.append((f"{name}:{count}" if count is not None else name, f"{key}.{name}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            if isinstance(item, dict):
                items += [
                    (f"{n}:{c}" if c is not None else n, f"{where}.{n}") for n, c in item.items()
                ]
            elif item is not None:
                items.append((item, where))
    else:
        raise SpecError(
            path, key, f"expected NAME, NAME:N, a list or a set of them; found {describe(value)}"
        )
    return [_parse_accelerator(item, path, where) for item, where in items]


def _parse_accelerator(item: object, path: str, key: str) -> tuple[str, float]:
    allowed = "NAME or NAME:N, such as A100, H100:8 or T4:0.5"
    match = _ACCEL_RE.match(item) if isinstance(item, str) else None
    if match is None:
        raise SpecError(path, key, f"expected {allowed}; found {describe(item)}")
    count = float(match.group(2)) if match.group(2) else 1.0
    if count <= 0 or not math.isfinite(count) or (count > 1 and not count.is_integer()):
        raise SpecError(path, key, f"expected a count > 0 (whole above 1); {allowed}")
    return match.group(1), count


def _parse_job_recovery(value: object, path: str, key: str) -> int | None:
    if value is None or isinstance(value, str):
        return None  # a strategy name only matters for cloud VMs
    raw = mapping(value, path, key, "strategy, max_restarts_on_errors")
    check_keys(
        raw, ("strategy", "max_restarts_on_errors", "recover_on_exit_codes"), path, f"{key}."
    )
    restarts = raw.get("max_restarts_on_errors")
    if restarts is None:
        return None
    if isinstance(restarts, bool) or not isinstance(restarts, int) or not 0 <= restarts <= 100:
        raise SpecError(
            path,
            f"{key}.max_restarts_on_errors",
            f"expected a whole number from 0 to 100; found {describe(restarts)}",
        )
    return restarts


def effective_cpus(cpus: float, defaulted: bool, machine_cpus: float) -> float:
    """The CPUs a job reserves: a default request is min(1, machine CPUs), so that a
    0.5 CPU container (Kubernetes ``cpu: 500m``) runs default jobs; an explicit one is kept."""
    return min(cpus, machine_cpus) if defaulted else cpus


def fits(resources: ResourceSpec, machine: Machine) -> str | None:
    """None when ``resources`` can ever be given by ``machine``, else what is short."""
    cpus = effective_cpus(resources.cpus, resources.cpus_defaulted, machine.cpus)
    if cpus > machine.cpus + 1e-9:
        return f"{cpus:g} CPUs (this machine can give {machine.cpus:g})"
    if resources.memory_bytes is not None and resources.memory_bytes > machine.memory_bytes:
        return (
            f"{format_size(resources.memory_bytes)} of memory (this machine can give "
            f"{format_size(machine.memory_bytes)})"
        )
    if resources.gpus:
        matching = [d for d in machine.gpus if gpu_matches(resources.accelerator, d)]
        need = max(1, math.ceil(resources.gpus))
        if len(matching) < need:
            have = ", ".join(machine.gpus) if machine.gpus else "no NVIDIA GPU"
            return f"{resources.gpus:g} {resources.accelerator or 'GPU'} (this machine has {have})"
    return None


def choose(candidates: Sequence[ResourceSpec], machine: Machine | None) -> ResourceSpec | None:
    """The first candidate that fits ``machine`` (no machine: the first one)."""
    if machine is None:
        return candidates[0]
    for candidate in candidates:
        if fits(candidate, machine) is None:
            return candidate
    return None


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
