"""Task and service specs: load YAML files (or CLI flags) into typed, frozen dataclasses.

Everything a user can get wrong in a spec is raised as :class:`SpecError` naming the file
(and the document, in a multi-document file), the dotted key, what was found and what is
allowed (exit 2). Parts: :mod:`.yamlio` (safe reading), :mod:`.values` (small validators),
:mod:`.resources`, :mod:`.task`, :mod:`.service`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sky_mini.spec.resources import (
    MIN_MEMORY_BYTES,
    RESOURCE_KEYS,
    Machine,
    ResourceChoice,
    ResourceSpec,
    check_fits,
    effective_cpus,
    parse_infra,
    parse_resources,
)
from sky_mini.spec.task import (
    TASK_KEYS,
    TaskFile,
    TaskSpec,
    apply_overrides,
    check_required,
    load_task,
    load_task_file,
    resolve,
    task_from_command,
)
from sky_mini.spec.values import (
    ENV_NAME_RE,
    MAX_NAME_CHARS,
    expand_env_refs,
    parse_env_assignments,
)
from sky_mini.spec.yamlio import MAX_ALIASES, MAX_DEPTH, MAX_EXPANDED_NODES, MAX_FILE_BYTES

if TYPE_CHECKING:
    from sky_mini.spec.service import (
        MAX_REPLICAS,
        PROBE_KEYS,
        SERVICE_KEYS,
        SERVICE_NAME_RE,
        ReadinessProbe,
        ServiceSpec,
        load_service,
    )

_SERVICE_NAMES = frozenset(
    {
        "MAX_REPLICAS",
        "PROBE_KEYS",
        "SERVICE_KEYS",
        "SERVICE_NAME_RE",
        "ReadinessProbe",
        "ServiceSpec",
        "load_service",
    }
)


def __getattr__(name: str) -> Any:
    """Service names load on first use: `jobs launch` (the cron path) never needs them."""
    if name in _SERVICE_NAMES:
        from sky_mini.spec import service

        return getattr(service, name)
    raise AttributeError(f"module 'sky_mini.spec' has no attribute {name!r}")


__all__ = [
    "ENV_NAME_RE",
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_EXPANDED_NODES",
    "MAX_FILE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_REPLICAS",
    "MIN_MEMORY_BYTES",
    "PROBE_KEYS",
    "RESOURCE_KEYS",
    "SERVICE_KEYS",
    "SERVICE_NAME_RE",
    "TASK_KEYS",
    "Machine",
    "ReadinessProbe",
    "ResourceChoice",
    "ResourceSpec",
    "ServiceSpec",
    "TaskFile",
    "TaskSpec",
    "apply_overrides",
    "check_fits",
    "check_required",
    "effective_cpus",
    "expand_env_refs",
    "load_service",
    "load_task",
    "load_task_file",
    "parse_env_assignments",
    "parse_infra",
    "parse_resources",
    "resolve",
    "task_from_command",
]
