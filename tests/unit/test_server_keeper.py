"""ServerKeeper: what a waiting CLI does when no server is left to finish its jobs."""

from __future__ import annotations

import os
from typing import Any

import pytest

from sky_mini import client
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.state import flocked
from tests.helpers import FakeClock as Clock


@pytest.fixture
def paths(tmp_path: Any) -> Paths:
    paths = Paths(os.path.join(str(tmp_path), "home"))
    ensure_dirs(paths)
    return paths


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[Paths]:
    calls: list[Paths] = []
    monkeypatch.setattr(client, "ensure_server", calls.append)
    monkeypatch.delenv("SKY_MINI_DISABLE", raising=False)
    return calls


def test_a_waiter_starts_a_server_when_none_holds_the_lock(
    paths: Paths, starts: list[Paths], capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    keeper = client.ServerKeeper(paths, clock=clock)
    keeper.check()
    assert starts == []  # not before the first interval
    clock.now += client.SERVER_CHECK_SECONDS
    keeper.check()
    assert starts == [paths]
    assert "starting a new one" in capsys.readouterr().err


def test_a_live_server_is_left_alone(paths: Paths, starts: list[Paths]) -> None:
    clock = Clock()
    keeper = client.ServerKeeper(paths, clock=clock)
    with flocked(paths.server_lock):  # what a running server holds
        for _ in range(3):
            clock.now += client.SERVER_CHECK_SECONDS
            keeper.check()
    assert starts == []


def test_a_follower_only_warns_once_and_never_starts_a_server(
    paths: Paths, starts: list[Paths], capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    keeper = client.ServerKeeper(paths, revive=False, clock=clock)
    for _ in range(3):
        clock.now += client.SERVER_CHECK_SECONDS
        keeper.check()
    assert starts == []
    err = capsys.readouterr().err
    assert err.count("no server is running") == 1 and "sky-mini api start" in err


def test_the_negative_control_switch_turns_revival_off(
    paths: Paths, starts: list[Paths], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKY_MINI_DISABLE", "inotify,revive")
    clock = Clock()
    keeper = client.ServerKeeper(paths, clock=clock)
    clock.now += client.SERVER_CHECK_SECONDS
    keeper.check()
    assert starts == []
