"""The server's published capacity is used by the submit path only while it is still true."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sky_mini import capacity, resources, taskplan
from tests.helpers import wait_for


@pytest.fixture
def home(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    for name in (*capacity.INPUT_ENV, "SKY_MINI_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    server_dir = os.path.join(tmp_path, "server")
    os.makedirs(server_dir)
    return server_dir, os.path.join(tmp_path, "config.yaml")


def test_published_by_a_live_server_with_the_same_inputs_is_used(home: tuple[str, str]) -> None:
    server_dir, config = home
    capacity.publish(server_dir, config, 3.5, 5 * 2**30)
    assert capacity.read_published(server_dir, config) == (3.5, 5 * 2**30)


def test_another_override_in_the_client_means_detecting(
    home: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_dir, config = home
    capacity.publish(server_dir, config, 2.0, 2**30)
    monkeypatch.setenv("SKY_MINI_CPUS", "1")
    assert capacity.read_published(server_dir, config) is None


def test_an_edited_or_new_config_means_detecting(home: tuple[str, str]) -> None:
    server_dir, config = home
    capacity.publish(server_dir, config, 2.0, 2**30)
    with open(config, "w") as handle:
        handle.write("resources: {cpus: 1}\n")
    assert capacity.read_published(server_dir, config) is None
    capacity.publish(server_dir, config, 1.0, 2**30)
    assert capacity.read_published(server_dir, config) == (1.0, 2**30)
    with open(config, "a") as handle:
        handle.write("# edited\n")
    assert capacity.read_published(server_dir, config) is None


def test_a_file_left_by_a_dead_server_is_ignored(home: tuple[str, str]) -> None:
    server_dir, config = home
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    capacity.publish(server_dir, config, 64.0, 2**40)
    path = capacity.capacity_path(server_dir)
    with open(path) as handle:
        data = json.load(handle)
    data["pid"] = child.pid  # reaped: gone, or a different process by now
    with open(path, "w") as handle:
        json.dump(data, handle)
    assert capacity.read_published(server_dir, config) is None


def test_a_reused_pid_is_told_apart_by_its_start_time(home: tuple[str, str]) -> None:
    server_dir, config = home
    capacity.publish(server_dir, config, 64.0, 2**40)
    path = capacity.capacity_path(server_dir)
    with open(path) as handle:
        data = json.load(handle)
    data["start_ticks"] -= 1
    with open(path, "w") as handle:
        json.dump(data, handle)
    assert capacity.read_published(server_dir, config) is None


@pytest.mark.parametrize("content", ["", "{", "[]", '{"schema": 1}', '{"schema": 99}'])
def test_a_damaged_file_means_detecting(home: tuple[str, str], content: str) -> None:
    server_dir, config = home
    with open(capacity.capacity_path(server_dir), "w") as handle:
        handle.write(content)
    assert capacity.read_published(server_dir, config) is None


def test_the_disable_switch_ignores_the_file(
    home: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_dir, config = home
    capacity.publish(server_dir, config, 2.0, 2**30)
    monkeypatch.setenv("SKY_MINI_DISABLE", "capacity")
    assert capacity.read_published(server_dir, config) is None


def test_the_submit_path_reserves_what_the_server_reserves() -> None:
    assert taskplan.SERVER_RESERVE_MEMORY_BYTES == resources.SERVER_RESERVE_MEMORY_BYTES


def test_a_zombie_server_counts_as_gone(home: tuple[str, str]) -> None:
    server_dir, config = home
    child = subprocess.Popen([sys.executable, "-c", "pass"])

    def zombie() -> bool:
        with open(f"/proc/{child.pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"

    try:
        wait_for(zombie, message="the child to exit (not reaped)")
        capacity.publish(server_dir, config, 64.0, 2**40)
        path = capacity.capacity_path(server_dir)
        with open(path) as handle:
            data = json.load(handle)
        data["pid"] = child.pid
        with open(f"/proc/{child.pid}/stat", "rb") as handle:
            data["start_ticks"] = int(handle.read().rsplit(b")", 1)[1].split()[19])
        with open(path, "w") as handle:
            json.dump(data, handle)
        assert capacity.read_published(server_dir, config) is None
    finally:
        child.wait()


SETTINGS = {"infra": "slurm/debug", "slurm_partition": "debug"}


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in capacity.SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("settings_env")
def test_settings_published_by_a_live_server_are_used(home: tuple[str, str]) -> None:
    server_dir, config = home
    capacity.publish(server_dir, config, 2.0, 2**30, settings=SETTINGS)
    assert capacity.read_setting(server_dir, config, "infra") == (True, "slurm/debug")
    assert capacity.read_setting(server_dir, config, "slurm_partition") == (True, "debug")
    assert capacity.read_setting(server_dir, config, "unknown") == (False, None)


@pytest.mark.usefixtures("settings_env")
def test_settings_under_another_config_or_env_are_not_used(
    home: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_dir, config = home
    capacity.publish(server_dir, config, 2.0, 2**30, settings=SETTINGS)
    monkeypatch.setenv("SKY_MINI_KILL_GRACE_SECONDS", "soon")  # load_settings must see it
    assert capacity.read_setting(server_dir, config, "infra") == (False, None)
    monkeypatch.delenv("SKY_MINI_KILL_GRACE_SECONDS")
    with open(config, "w") as handle:
        handle.write("jobs: {infra: local}\n")
    assert capacity.read_setting(server_dir, config, "infra") == (False, None)


@pytest.mark.usefixtures("settings_env")
def test_a_file_without_settings_means_loading_them(home: tuple[str, str]) -> None:
    server_dir, config = home
    capacity.publish(server_dir, config, 2.0, 2**30)  # as a server before this change wrote
    assert capacity.read_published(server_dir, config) == (2.0, 2**30)
    assert capacity.read_setting(server_dir, config, "infra") == (False, None)
