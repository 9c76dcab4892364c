"""What ``jobs launch --async`` (the cron path) loads, and that its shortcuts never change an
answer: the server's published settings, and the cache of parsed task files."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import SkyMini


def launch_imports(sky: SkyMini, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The modules one ``jobs launch --async`` imports (it must succeed)."""
    run_env = dict(sky.env, PYTHONPROFILEIMPORTTIME="1", **(env or {}))
    result = subprocess.run(
        [sys.executable, "-m", "sky_mini", "jobs", "launch", "--async", *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]


def write_task(sky: SkyMini, text: str) -> str:
    path = os.path.join(os.path.dirname(sky.home), "task.yaml")
    with open(path, "w") as handle:
        handle.write(text)
    return path


def test_with_a_server_up_a_command_imports_neither_config_nor_yaml(sky: SkyMini) -> None:
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    imported = launch_imports(sky, "--", "true")
    assert "sky_mini.jobs" in imported  # the check does see the modules the CLI loads
    assert "sky_mini.config" not in imported
    assert "yaml" not in imported
    assert "psutil" not in imported
    # Negative control: a client whose environment the server did not see loads settings.
    imported = launch_imports(sky, "--", "true", env={"SKY_MINI_KILL_GRACE_SECONDS": "5"})
    assert "sky_mini.config" in imported


def test_a_config_edited_while_the_server_runs_is_read_again(sky: SkyMini) -> None:
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    assert sky.run("jobs", "launch", "--async", "--", "true").code == 0
    with open(os.path.join(sky.home, "config.yaml"), "w") as handle:
        handle.write("jobs:\n  infra: kubernetes\n")
    refused = sky.run("jobs", "launch", "--async", "--", "true")
    assert refused.code == 2, refused
    assert "jobs.infra" in refused.err
    listed = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert len(listed) == 1


def test_a_bad_setting_in_the_clients_environment_is_still_refused(sky: SkyMini) -> None:
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    sky.extra_env["SKY_MINI_MEMORY_MECHANISM"] = "magic"
    refused = sky.run("jobs", "launch", "--async", "--", "true")
    assert refused.code == 2, refused
    assert "SKY_MINI_MEMORY_MECHANISM='magic'" in refused.err


def test_a_repeated_task_file_is_parsed_once_and_an_edited_one_again(sky: SkyMini) -> None:
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    task = write_task(sky, 'name: nightly\nrun: "echo first"\nresources:\n  cpus: 1\n')
    assert "yaml" in launch_imports(sky, task)  # the first launch parses (negative control)
    assert "yaml" not in launch_imports(sky, task)
    write_task(sky, 'name: nightly\nrun: "echo second"\nresources:\n  cpus: 1\n')
    assert "yaml" in launch_imports(sky, task)
    ids = [str(job["id"]) for job in sky.run("jobs", "queue", "--all", "--json").json()]
    assert len(ids) == 3
    sky.run("jobs", "wait", *ids, timeout=120, check=True)
    outputs = [sky.run("jobs", "logs", "--no-follow", i, check=True).out for i in ids]
    assert sorted(out.strip() for out in outputs) == ["first", "first", "second"]


def test_an_invalid_task_file_is_refused_every_time(sky: SkyMini) -> None:
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    task = write_task(sky, "run: echo hi\nresources:\n  cpu: 1\n")
    first = sky.run("jobs", "launch", "--async", task)
    second = sky.run("jobs", "launch", "--async", task)
    assert first.code == second.code == 2, (first, second)
    assert "resources.cpu" in first.err
    assert first.err == second.err
    assert sky.run("jobs", "queue", "--all", "--json", check=True).json() == []


def test_a_dry_run_without_a_home_creates_none(sky: SkyMini) -> None:
    task = write_task(sky, "run: echo hi\n")
    result = sky.run("jobs", "launch", "--dry-run", task)
    assert result.code == 0, result
    assert not os.path.exists(sky.home)


def test_exiting_early_keeps_every_byte_and_lets_a_profiler_write(sky: SkyMini) -> None:
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    ids = [sky.run("jobs", "launch", "--async", "--", "true", check=True).out for _ in range(3)]
    listed = sky.run("jobs", "queue", "--all", "--json", check=True).json()  # a pipe, not a tty
    assert sorted(str(job["id"]) for job in listed) == sorted(i.strip() for i in ids)
    profile = os.path.join(os.path.dirname(sky.home), "launch.prof")
    argv = ["-m", "cProfile", "-o", profile, "-m", "sky_mini", "jobs", "launch", "--async"]
    result = subprocess.run(
        [sys.executable, *argv, "--", "true"], env=sky.env, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.getsize(profile) > 0  # cProfile writes after main() returns
