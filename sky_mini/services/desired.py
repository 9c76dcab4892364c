"""Services on disk: desired state (written by clients) and facts (written by the controller).

Clients write intents, the server and its services-controller write facts. Layout under
``$SKY_MINI_HOME/services``::

    <name>.json                desired state: {spec, desired: up|down, generation}  (clients)
    <name>.state.json          facts: service status, replicas, LB port        (controller)
    _controller.json           facts: controller pid, state, autostop_at        (controller)
    _controller.intent         "please stop the controller" {op, force}         (clients)
    .lock                      flock held for one read-modify-write of a desired file
    <name>/replica-<n>.log     a replica's stdout+stderr (appended across restarts)
    <name>/setup.log           the service's setup command output

The controller files start with ``_``, which a service name never does, so a service named
``controller`` cannot collide with them. Facts are trusted only while the controller that
wrote them is alive (PID and create time match): a dead controller's facts are stale.

This module is shared data, like ``state``: it imports neither ``client`` nor ``server``.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sky_mini.errors import SkyMiniError, SpecError, UsageError
from sky_mini.paths import Paths
from sky_mini.procs import is_same_process
from sky_mini.state import atomic_write_json, flocked, read_json

SCHEMA_VERSION = 1
CONTROLLER_FACTS = "_controller.json"
CONTROLLER_INTENT = "_controller.intent"
LOCK_NAME = ".lock"
DESIRED_SUFFIX = ".json"
FACTS_SUFFIX = ".state.json"
LB_HOST = "127.0.0.1"
CONTROLLER_NAME = "services-controller"


class ServiceStatus(enum.StrEnum):
    CONTROLLER_INIT = "CONTROLLER_INIT"
    REPLICA_INIT = "REPLICA_INIT"
    READY = "READY"
    NO_REPLICA = "NO_REPLICA"
    FAILED = "FAILED"
    SHUTTING_DOWN = "SHUTTING_DOWN"


class ReplicaState(enum.StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    NOT_READY = "NOT_READY"
    BACKOFF = "BACKOFF"
    FAILED = "FAILED"
    STOPPING = "STOPPING"

    @property
    def has_process(self) -> bool:
        return self in (
            ReplicaState.STARTING,
            ReplicaState.READY,
            ReplicaState.NOT_READY,
            ReplicaState.STOPPING,
        )


# -- file names ---------------------------------------------------------------------------


def desired_path(services_dir: str, name: str) -> str:
    return os.path.join(services_dir, f"{name}{DESIRED_SUFFIX}")


def facts_path(services_dir: str, name: str) -> str:
    return os.path.join(services_dir, f"{name}{FACTS_SUFFIX}")


def controller_facts_path(services_dir: str) -> str:
    return os.path.join(services_dir, CONTROLLER_FACTS)


def controller_intent_path(services_dir: str) -> str:
    return os.path.join(services_dir, CONTROLLER_INTENT)


def service_dir(services_dir: str, name: str) -> str:
    return os.path.join(services_dir, name)


def replica_log_path(services_dir: str, name: str, index: int) -> str:
    return os.path.join(services_dir, name, f"replica-{index}.log")


def setup_log_path(services_dir: str, name: str) -> str:
    return os.path.join(services_dir, name, "setup.log")


def is_desired_file(filename: str) -> bool:
    """``web.json`` is a desired-state file; ``web.state.json`` and ``_controller.json`` not."""
    if not filename.endswith(DESIRED_SUFFIX) or filename.endswith(FACTS_SUFFIX):
        return False
    stem = filename[: -len(DESIRED_SUFFIX)]
    from sky_mini.spec import SERVICE_NAME_RE

    return bool(SERVICE_NAME_RE.fullmatch(stem))


# -- desired state --------------------------------------------------------------------------


@dataclass
class DesiredService:
    """What a user asked for: one service's spec and whether it should be up."""

    name: str
    spec: dict[str, Any]
    desired: str  # "up" | "down"
    generation: int
    updated_at: float
    source: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def is_up(self) -> bool:
        return self.desired == "up"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "name": self.name,
            "spec": self.spec,
            "desired": self.desired,
            "generation": self.generation,
            "updated_at": self.updated_at,
            "source": self.source,
            "env": self.env,
        }

    @classmethod
    def from_json(cls, data: Any) -> DesiredService | None:
        """Parse a desired-state file; None when it is not one this version understands."""
        if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
            return None
        if int(data.get("schema", 1)) > SCHEMA_VERSION:
            return None
        desired = data.get("desired")
        if desired not in ("up", "down") or not isinstance(data.get("name"), str):
            return None
        env = data.get("env") or {}
        return cls(
            name=data["name"],
            spec=data["spec"],
            desired=desired,
            generation=int(data.get("generation", 1)),
            updated_at=float(data.get("updated_at", 0.0)),
            source=data.get("source"),
            env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
        )


def read_desired(services_dir: str, name: str) -> DesiredService | None:
    return DesiredService.from_json(read_json(desired_path(services_dir, name)))


def read_all_desired(services_dir: str) -> dict[str, DesiredService]:
    """Every service a user has ever brought up (and not removed), by name."""
    found: dict[str, DesiredService] = {}
    try:
        names = sorted(os.listdir(services_dir))
    except FileNotFoundError:
        return found
    for filename in names:
        if not is_desired_file(filename):
            continue
        record = DesiredService.from_json(read_json(os.path.join(services_dir, filename)))
        if record is not None and record.name == filename[: -len(DESIRED_SUFFIX)]:
            found[record.name] = record
    return found


def desired_signature(services_dir: str) -> tuple[tuple[str, int, int, int], ...]:
    """A cheap fingerprint of the desired-state files (stat only).

    Stats every file rather than trusting the directory mtime: two renames within one
    timestamp tick would otherwise look like one change.
    """
    entries: list[tuple[str, int, int, int]] = []
    try:
        names = os.listdir(services_dir)
    except FileNotFoundError:
        return ()
    for filename in sorted(names):
        if not is_desired_file(filename):
            continue
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(os.path.join(services_dir, filename))
            entries.append((filename, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(entries)


def up_services(services_dir: str) -> list[str]:
    return sorted(n for n, d in read_all_desired(services_dir).items() if d.is_up)


def lock_path(services_dir: str) -> str:
    return os.path.join(services_dir, LOCK_NAME)


def validate_for_service(spec: Any, path: str) -> None:
    """Service-only rules on top of ``spec.load_service`` (exit 2, nothing recorded)."""
    if spec.resources.timeout_seconds is not None:
        raise SpecError(
            path,
            "resources.timeout",
            "a service runs until 'sky-mini services down'; remove resources.timeout",
        )


def record_up(
    paths: Paths, spec: Any, source: str, env: dict[str, str] | None = None
) -> DesiredService:
    """Record ``spec`` (a ServiceSpec) as desired up; bump its generation. Returns the record.

    Refuses (exit 2, nothing recorded) when another service that is up uses the same
    load-balancer port.
    """
    services_dir = paths.services_dir
    with flocked(lock_path(services_dir)):
        current = read_all_desired(services_dir)
        if spec.port is not None:
            for other in current.values():
                if other.name != spec.name and other.is_up and other.spec.get("port") == spec.port:
                    raise UsageError(
                        f"{source}: key 'port': {spec.port} is already the load balancer port "
                        f"of service '{other.name}'; choose another port or run "
                        f"'sky-mini services down {other.name}'"
                    )
        previous = current.get(spec.name)
        record = DesiredService(
            name=spec.name,
            spec=spec.to_json(),
            desired="up",
            generation=(previous.generation if previous else 0) + 1,
            updated_at=time.time(),
            source=os.path.abspath(source),
            env=dict(os.environ if env is None else env),
        )
        os.makedirs(service_dir(services_dir, spec.name), mode=0o700, exist_ok=True)
        atomic_write_json(desired_path(services_dir, spec.name), record.to_json())
    return record


def record_down(paths: Paths, names: Iterable[str], *, every: bool) -> list[tuple[str, bool]]:
    """Mark services desired down. Returns [(name, was_up)]; unknown names raise (exit 1)."""
    services_dir = paths.services_dir
    changed: list[tuple[str, bool]] = []
    with flocked(lock_path(services_dir)):
        current = read_all_desired(services_dir)
        wanted = sorted(current) if every else list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in current]
        if unknown:
            known = ", ".join(sorted(current)) or "none"
            raise SkyMiniError(
                f"no service named {', '.join(repr(n) for n in unknown)} "
                f"(known services: {known}); see 'sky-mini services status'"
            )
        for name in wanted:
            record = current[name]
            changed.append((name, record.is_up))
            if record.is_up:
                record.desired = "down"
                record.updated_at = time.time()
                atomic_write_json(desired_path(services_dir, name), record.to_json())
    return changed


def write_controller_intent(paths: Paths, *, force: bool) -> None:
    atomic_write_json(
        controller_intent_path(paths.services_dir),
        {"schema": SCHEMA_VERSION, "op": "stop", "force": force, "at": time.time()},
    )


def take_controller_intent(services_dir: str) -> dict[str, Any] | None:
    """Read and remove the controller intent (server side); None when there is none."""
    path = controller_intent_path(services_dir)
    taken = f"{path}.taken"
    try:
        os.replace(path, taken)  # a client writing a new intent now is not lost
    except FileNotFoundError:
        return None
    data = read_json(taken)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(taken)
    return data if isinstance(data, dict) else None


# -- facts ----------------------------------------------------------------------------------


def read_controller_facts(services_dir: str) -> dict[str, Any] | None:
    data = read_json(controller_facts_path(services_dir), quarantine_bad=False)
    return data if isinstance(data, dict) else None


def controller_alive(facts: dict[str, Any] | None) -> bool:
    """True when the controller that wrote ``facts`` still runs (PID + create time)."""
    if not facts or facts.get("state") == "stopped":
        return False
    return is_same_process(facts.get("pid"), facts.get("create_time"))


def read_service_facts(services_dir: str, name: str) -> dict[str, Any] | None:
    data = read_json(facts_path(services_dir, name), quarantine_bad=False)
    return data if isinstance(data, dict) else None


def controller_row(server_status: dict[str, Any] | None) -> dict[str, Any] | None:
    """The services-controller component row from the server's status snapshot."""
    if not server_status:
        return None
    for row in server_status.get("components") or []:
        if isinstance(row, dict) and row.get("kind") == CONTROLLER_NAME:
            return row
    return None


def build_status(paths: Paths, server_status: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """``services status`` as data: one entry per service that is up or still stopping.

    Facts are used only when the live controller wrote them for the current generation;
    otherwise an up service is CONTROLLER_INIT (waiting for the controller to take it).
    """
    services_dir = paths.services_dir
    controller = read_controller_facts(services_dir)
    alive = controller_alive(controller)
    controller_pid = controller.get("pid") if controller and alive else None
    rows: list[dict[str, Any]] = []
    for name, desired in read_all_desired(services_dir).items():
        facts = read_service_facts(services_dir, name)
        fresh = (
            facts is not None
            and alive
            and facts.get("controller_pid") == controller_pid
            and facts.get("generation") == desired.generation
        )
        if not desired.is_up and not fresh:
            continue  # down and no live facts: nothing left of it
        spec = desired.spec
        total = int(spec.get("replicas") or 1)
        if fresh and facts is not None:
            replicas = list(facts.get("replicas") or [])
            status = str(facts.get("status"))
            if not desired.is_up and status != ServiceStatus.SHUTTING_DOWN.value:
                continue
            reason = facts.get("reason")
            port = facts.get("lb_port")
        else:
            replicas = []
            status = ServiceStatus.CONTROLLER_INIT.value
            port = spec.get("port")
            if server_status is None:
                reason = "no sky-mini server is running; 'sky-mini api start' brings it back"
            else:
                row = controller_row(server_status)
                restarts = row.get("restarts", 0) if row else 0
                reason = "waiting for the services controller to start" + (
                    f" (it has restarted {restarts} time(s); see 'sky-mini api logs')"
                    if restarts
                    else ""
                )
        ready = sum(1 for r in replicas if r.get("state") == ReplicaState.READY.value)
        rows.append(
            {
                "name": name,
                "status": status,
                "reason": reason,
                "desired": desired.desired,
                "generation": desired.generation,
                "ready_replicas": ready,
                "total_replicas": total,
                "port": port,
                "endpoint": f"{LB_HOST}:{port}" if port else None,
                "replicas": replicas,
                "updated_at": desired.updated_at,
            }
        )
    info: dict[str, Any] = {"name": CONTROLLER_NAME, "running": alive, "server_running": True}
    if server_status is None:
        info["server_running"] = False
    row = controller_row(server_status)
    info["restarts"] = row.get("restarts", 0) if row else 0
    info["component_state"] = row.get("state") if row else None
    if alive and controller is not None:
        autostop_at = controller.get("autostop_at")
        info.update(
            pid=controller.get("pid"),
            state=controller.get("state"),
            started_at=controller.get("started_at"),
            uptime_seconds=now - float(controller.get("started_at") or now),
            idle_since=controller.get("idle_since"),
            idle_minutes=controller.get("idle_minutes"),
            autostop_at=autostop_at,
            autostop_in_seconds=(
                max(0.0, float(autostop_at) - now) if autostop_at is not None else None
            ),
        )
    else:
        info.update(pid=None, state="stopped", autostop_at=None, autostop_in_seconds=None)
    return {"services": rows, "controller": info}


def wait_for_services_stopped(paths: Paths, names: list[str], timeout: float) -> list[str]:
    """Poll until the controller no longer runs any of ``names``; return those still running."""
    deadline = time.monotonic() + timeout
    services_dir = paths.services_dir
    while True:
        controller = read_controller_facts(services_dir)
        alive = controller_alive(controller)
        pid = controller.get("pid") if controller else None
        left = []
        if alive:
            for name in names:
                facts = read_service_facts(services_dir, name)
                if facts is not None and facts.get("controller_pid") == pid:
                    left.append(name)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def wait_for_controller_stopped(paths: Paths, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while controller_alive(read_controller_facts(paths.services_dir)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
