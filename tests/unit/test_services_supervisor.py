"""ServicesSupervisor (the server's side) with a fake controller spawner and a fake clock."""

from __future__ import annotations

import json
import os
import selectors
from collections.abc import Iterator
from pathlib import Path

import pytest

from sky_mini import services as svc
from sky_mini.config import Settings
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.services.model import ControllerConfig
from sky_mini.services.supervisor import ServicesSupervisor
from sky_mini.spec import ServiceSpec
from tests.helpers import FakeClock as Clock

FAKE_PID = 999_999_999  # no such process: psutil lookups just return None
KILLED_BY_SIGKILL = 9  # raw wait status
EXITED_0 = 0


class FakeController:
    """Stands in for a forked controller: we hold the other ends of its pipes."""

    def __init__(self) -> None:
        self.spawned: list[ControllerConfig] = []
        self.cmd_r = -1
        self.evt_w = -1
        self.fds: list[int] = []

    def __call__(self, config: ControllerConfig) -> tuple[int, int, int]:
        self.spawned.append(config)
        cmd_r, cmd_w = os.pipe()
        evt_r, evt_w = os.pipe()
        os.set_blocking(cmd_r, False)
        self.cmd_r, self.evt_w = cmd_r, evt_w
        self.fds += [cmd_r, evt_w]
        return FAKE_PID + len(self.spawned), cmd_w, evt_r

    def commands(self) -> list[dict[str, object]]:
        try:
            raw = os.read(self.cmd_r, 65536)
        except BlockingIOError:
            return []
        return [json.loads(line) for line in raw.decode().splitlines() if line]

    def send(self, message: dict[str, object]) -> None:
        os.write(self.evt_w, (json.dumps(message) + "\n").encode())

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


Env = tuple[ServicesSupervisor, FakeController, Paths, Clock]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    paths = Paths(str(tmp_path / "home"))
    ensure_dirs(paths)
    fake = FakeController()
    clock = Clock(5000.0)
    supervisor = ServicesSupervisor(
        paths,
        Settings(disabled=frozenset({"sweep"})),
        selector=selectors.DefaultSelector(),
        key="unittest",
        instance_id="x",
        cgroup_caps=None,
        cgroup_base="sky-mini-unittest",
        memory_mechanism="watchdog",
        clock=clock,
        spawn=fake,
    )
    try:
        yield supervisor, fake, paths, clock
    finally:
        supervisor.close_pipes()
        fake.close()


def up(paths: Paths, name: str = "web") -> None:
    svc.record_up(paths, ServiceSpec(name=name, run="sleep 1000"), f"{name}.yaml", env={})


def test_no_controller_until_a_service_is_up(env: Env) -> None:
    supervisor, fake, paths, clock = env
    supervisor.reconcile(clock.now)
    assert fake.spawned == [] and not supervisor.has_work()
    (row,) = supervisor.components()
    assert row["state"] == "stopped" and row["should_run"] is False and row["pid"] is None
    up(paths)
    assert supervisor.reconcile(clock.now)
    assert len(fake.spawned) == 1 and supervisor.has_work()
    config = fake.spawned[0]
    assert config.idle_minutes == 10.0 and config.home_key == "unittest"
    (row,) = supervisor.components()
    assert row["pid"] == FAKE_PID + 1 and row["should_run"] is True
    assert row["kind"] == "services-controller" and row["restarts"] == 0


def test_a_change_is_forwarded_as_reload_and_status_events_are_shown(env: Env) -> None:
    supervisor, fake, paths, clock = env
    up(paths)
    supervisor.reconcile(clock.now)
    supervisor.reconcile(clock.now)
    assert fake.commands() == []  # nothing changed: nothing sent
    up(paths, "api")
    supervisor.reconcile(clock.now)
    assert fake.commands() == [{"op": "reload"}]
    fake.send({"event": "status", "state": "idle", "autostop_at": clock.now + 600})
    assert supervisor.reconcile(clock.now)
    (row,) = supervisor.components()
    assert row["state"] == "idle" and row["autostop_at"] == clock.now + 600
    assert supervisor.status_json()["autostop_at"] == clock.now + 600


def test_a_crashed_controller_is_restarted_and_counted_with_backoff(env: Env) -> None:
    supervisor, fake, paths, clock = env
    up(paths)
    supervisor.reconcile(clock.now)
    supervisor.child_exited(FAKE_PID + 1, KILLED_BY_SIGKILL)
    assert supervisor.reconcile(clock.now)  # the first restart is immediate
    assert len(fake.spawned) == 2 and supervisor.restarts == 1
    supervisor.child_exited(FAKE_PID + 2, KILLED_BY_SIGKILL)
    supervisor.reconcile(clock.now)
    assert len(fake.spawned) == 2  # second crash in the window: 1 s backoff
    (row,) = supervisor.components()
    assert row["state"] == "backoff" and row["should_run"] is True
    clock.now += 1.0
    supervisor.reconcile(clock.now)
    assert len(fake.spawned) == 3 and supervisor.restarts == 2


def test_an_idle_exit_is_not_restarted_until_the_next_up(env: Env) -> None:
    supervisor, fake, paths, clock = env
    up(paths)
    supervisor.reconcile(clock.now)
    svc.record_down(paths, ["web"], every=False)
    supervisor.reconcile(clock.now)
    assert not supervisor.has_work()
    fake.send({"event": "exiting", "reason": "idle"})
    supervisor.child_exited(FAKE_PID + 1, EXITED_0)
    clock.now += 3600
    assert supervisor.reconcile(clock.now)
    assert len(fake.spawned) == 1 and supervisor.restarts == 0
    (row,) = supervisor.components()
    assert row["state"] == "stopped" and row["should_run"] is False
    up(paths)
    supervisor.reconcile(clock.now)
    assert len(fake.spawned) == 2 and supervisor.restarts == 0


def test_stop_intent_is_refused_while_up_unless_forced(env: Env) -> None:
    supervisor, fake, paths, clock = env
    up(paths)
    supervisor.reconcile(clock.now)
    svc.write_controller_intent(paths, force=False)
    supervisor.reconcile(clock.now)
    assert fake.commands() == []
    assert not os.path.exists(svc.controller_intent_path(paths.services_dir))
    # --force: the client marks every service down, then asks.
    svc.record_down(paths, [], every=True)
    svc.write_controller_intent(paths, force=True)
    supervisor.reconcile(clock.now)
    assert fake.commands() == [{"op": "reload"}, {"op": "exit", "reason": "stopped by user"}]
    supervisor.child_exited(FAKE_PID + 1, EXITED_0)
    supervisor.reconcile(clock.now)
    assert len(fake.spawned) == 1 and supervisor.is_stopped()


def test_server_shutdown_asks_the_controller_to_exit_and_keeps_the_desired_state(
    env: Env,
) -> None:
    supervisor, fake, paths, clock = env
    up(paths)
    supervisor.reconcile(clock.now)
    supervisor.shutdown(3.0)
    assert fake.commands() == [{"op": "exit", "reason": "server shutdown", "grace": 3.0}]
    assert not supervisor.is_stopped()
    supervisor.child_exited(FAKE_PID + 1, EXITED_0)
    supervisor.reconcile(clock.now)
    assert supervisor.is_stopped() and len(fake.spawned) == 1
    assert svc.up_services(paths.services_dir) == ["web"]
