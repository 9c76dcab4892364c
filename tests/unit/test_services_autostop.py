"""The services-controller's idle autostop on a fake clock (no ten-minute sleeps)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sky_mini import services as svc
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.services.controller import Controller, decide_autostop
from sky_mini.services.model import ControllerConfig
from sky_mini.spec import ServiceSpec
from tests.helpers import FakeClock

TEN_MINUTES = 600.0
T0 = 1_000_000.0


def test_exits_at_exactly_the_idle_time_and_not_before() -> None:
    first = decide_autostop(idle_since=None, busy=False, idle_minutes=10, now=T0)
    assert first == type(first)(idle_since=T0, autostop_at=T0 + TEN_MINUTES, exit_now=False)
    just_before = decide_autostop(
        idle_since=T0, busy=False, idle_minutes=10, now=T0 + TEN_MINUTES - 0.001
    )
    assert not just_before.exit_now
    at = decide_autostop(idle_since=T0, busy=False, idle_minutes=10, now=T0 + TEN_MINUTES)
    assert at.exit_now


def test_work_cancels_the_countdown_and_a_new_idle_period_starts_from_zero() -> None:
    busy = decide_autostop(idle_since=T0, busy=True, idle_minutes=10, now=T0 + 300)
    assert busy.idle_since is None and busy.autostop_at is None and not busy.exit_now
    again = decide_autostop(idle_since=None, busy=False, idle_minutes=10, now=T0 + 400)
    assert again.autostop_at == T0 + 400 + TEN_MINUTES
    late = decide_autostop(
        idle_since=again.idle_since, busy=False, idle_minutes=10, now=T0 + TEN_MINUTES
    )
    assert not late.exit_now


def test_false_never_stops_and_fractions_are_minutes() -> None:
    never = decide_autostop(idle_since=T0, busy=False, idle_minutes=None, now=T0 + 1e9)
    assert never.autostop_at is None and not never.exit_now
    frac = decide_autostop(idle_since=T0, busy=False, idle_minutes=0.05, now=T0 + 3.0)
    assert frac.autostop_at == pytest.approx(T0 + 3.0) and frac.exit_now


# -- the same decision inside a real Controller object, driven tick by tick ---------------


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[tuple[Controller, Paths, FakeClock]]:
    paths = Paths(str(tmp_path / "home"))
    ensure_dirs(paths)
    clock = FakeClock(T0)
    cmd_r, cmd_w = os.pipe()
    evt_r, evt_w = os.pipe()
    os.set_blocking(evt_w, False)
    config = ControllerConfig(
        server_pid=os.getpid(),
        services_dir=paths.services_dir,
        home_key="test",
        instance_id="unit",
        cgroup_caps=None,
        cgroup_base="sky-mini-test",
        memory_mechanism="watchdog",
        kill_grace_seconds=1.0,
        idle_minutes=10.0,  # the default
    )
    ctl = Controller(config, cmd_r, evt_w, clock=clock)
    try:
        yield ctl, paths, clock
    finally:
        for rt in ctl.all_runtimes():
            ctl.lb.close(rt)
        for fd in (cmd_r, cmd_w, evt_r, evt_w):
            os.close(fd)
        ctl.signals.close()


def spec(name: str = "web") -> ServiceSpec:
    return ServiceSpec(name=name, run="sleep 1000", replicas=1)


def test_controller_with_default_idle_minutes_exits_at_ten_minutes(
    controller: tuple[Controller, Paths, FakeClock],
) -> None:
    ctl, _paths, clock = controller
    ctl.reload(clock.now)
    assert not ctl.check_autostop(clock.now)
    assert ctl.autostop_at == T0 + TEN_MINUTES
    facts = svc.read_controller_facts(_paths.services_dir)
    assert facts is not None and facts["autostop_at"] == T0 + TEN_MINUTES
    assert facts["state"] == "idle"
    clock.now = T0 + TEN_MINUTES - 0.01
    assert not ctl.check_autostop(clock.now)
    clock.now = T0 + TEN_MINUTES
    assert ctl.check_autostop(clock.now)


def test_an_up_during_the_countdown_cancels_it(
    controller: tuple[Controller, Paths, FakeClock],
) -> None:
    ctl, paths, clock = controller
    ctl.reload(clock.now)
    assert not ctl.check_autostop(clock.now)
    clock.now = T0 + 300
    svc.record_up(paths, spec(), "web.yaml", env={})
    ctl.reload(clock.now)
    assert not ctl.check_autostop(clock.now)
    assert ctl.autostop_at is None and ctl.idle_since is None
    clock.now = T0 + TEN_MINUTES  # the old deadline passes while the service is up
    assert not ctl.check_autostop(clock.now)
    # The service goes down later: a fresh ten-minute countdown starts then.
    clock.now = T0 + 700
    svc.record_down(paths, ["web"], every=False)
    ctl.reload(clock.now)
    ctl.step(clock.now)  # the stopped service (no replica ever started) is forgotten
    assert not ctl.check_autostop(clock.now)
    assert ctl.autostop_at == T0 + 700 + TEN_MINUTES
    clock.now = T0 + 700 + TEN_MINUTES - 0.01
    assert not ctl.check_autostop(clock.now)
    clock.now = T0 + 700 + TEN_MINUTES
    assert ctl.check_autostop(clock.now)


def test_a_service_waiting_on_setup_does_not_spin_the_loop(
    controller: tuple[Controller, Paths, FakeClock],
) -> None:
    ctl, paths, clock = controller
    with_setup = ServiceSpec(name="web", run="sleep 1000", setup="pip install x")
    svc.record_up(paths, with_setup, "web.yaml", env={})
    ctl.reload(clock.now)
    (rt,) = ctl.services.values()
    for state in ("running", "failed"):  # replicas wait in BACKOFF with a past start time
        rt.setup.state = state
        assert ctl.next_timeout(clock.now + 5) >= 0.5
    rt.setup.state = "done"
    assert ctl.next_timeout(clock.now + 5) == 0.0  # now they are due
