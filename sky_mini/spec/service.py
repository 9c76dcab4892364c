"""Service specs (``services up``): replicas of ``run`` behind a load balancer."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sky_mini.errors import SpecError
from sky_mini.spec.resources import ResourceSpec, parse_resources
from sky_mini.spec.values import (
    check_keys,
    check_text,
    describe,
    expand_env_refs,
    mapping,
    parse_command,
    parse_envs,
    parse_int,
    parse_run,
    parse_seconds,
    parse_workdir,
    yaml_dir,
)
from sky_mini.spec.yamlio import load_mapping

MAX_REPLICAS = 64
MAX_PROBE_PATH_CHARS = 2048
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
SERVICE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


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


def load_service(path: str) -> ServiceSpec:
    """Load and validate a service YAML file (see CONTRACT "Services")."""
    data = load_mapping(path, "a service")
    check_keys(data, SERVICE_KEYS, path, "")
    envs = parse_envs(data.get("envs"), path, "envs")
    if "PORT" in envs:
        raise SpecError(
            path, "envs.PORT", "PORT is set by sky-mini for each replica; remove it from envs"
        )
    run = parse_run(data.get("run"), path)
    setup = parse_command(data.get("setup"), path, "setup", required=False)
    return ServiceSpec(
        name=_parse_service_name(data.get("name"), path),
        run=expand_env_refs(run, envs),
        replicas=(
            1
            if data.get("replicas") is None
            else parse_int(data["replicas"], path, "replicas", 1, MAX_REPLICAS)
        ),
        port=(
            None if data.get("port") is None else parse_int(data["port"], path, "port", 1, 65535)
        ),
        readiness_probe=_parse_probe(data.get("readiness_probe"), path),
        resources=_service_resources(data.get("resources"), path),
        envs=envs,
        workdir=parse_workdir(data.get("workdir"), path, "workdir", yaml_dir(path)),
        setup=None if setup is None else expand_env_refs(setup, envs),
    )


def _parse_service_name(value: object, path: str) -> str:
    allowed = (
        "1 to 63 lowercase letters, digits and dashes, starting with a letter or digit "
        "(e.g. my-api)"
    )
    if value is None:
        raise SpecError(path, "name", f"missing; a service needs a name of {allowed}")
    if not isinstance(value, str) or not SERVICE_NAME_RE.fullmatch(value):
        raise SpecError(path, "name", f"expected {allowed}; found {describe(value)}")
    return value


def _parse_probe(value: object, path: str) -> ReadinessProbe | None:
    key = "readiness_probe"
    if value is None:
        return None
    if isinstance(value, str):
        return ReadinessProbe(path=_parse_probe_path(value, path, key))
    raw = mapping(value, path, key, "path, initial_delay_seconds, timeout_seconds (or a path)")
    check_keys(raw, PROBE_KEYS, path, f"{key}.")
    probe = ReadinessProbe()
    delay = raw.get("initial_delay_seconds")
    timeout = raw.get("timeout_seconds")
    return ReadinessProbe(
        path=probe.path if raw.get("path") is None else _parse_probe_path(raw["path"], path),
        initial_delay_seconds=(
            probe.initial_delay_seconds
            if delay is None
            else parse_seconds(delay, path, f"{key}.initial_delay_seconds", allow_zero=True)
        ),
        timeout_seconds=(
            probe.timeout_seconds
            if timeout is None
            else parse_seconds(timeout, path, f"{key}.timeout_seconds", allow_zero=False)
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
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    return check_text(value, path, key)


def _service_resources(value: object, path: str) -> ResourceSpec:
    """Replicas reserve cpus and memory only; other resources keys are refused here."""
    if value is None:
        return ResourceSpec()
    raw = mapping(value, path, "resources", "cpus, memory and timeout")
    check_keys(raw, ("cpus", "memory", "timeout"), path, "resources.")
    return parse_resources(raw, path, "resources").candidates[0]
