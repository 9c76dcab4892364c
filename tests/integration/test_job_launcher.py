"""The native job launcher (``sky_mini/native/joblaunch.c``): a job it starts is the job the
Python fork starts, byte for byte in what the job can see; without a compiler the server
says so and jobs still run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from typing import Any

import pytest

from sky_mini.server.backends.local import jobproc, launcher
from tests.helpers import SkyMini, wait_for

# What a job can see of how it was started, one line each.
PROBE = r"""
echo "cwd=$(pwd)"
echo "args=$0 $#"
echo "data=$(ulimit -d)"
echo "oom=$(cat /proc/self/oom_score_adj)"
echo "session=$(( $(cut -d' ' -f6 /proc/$$/stat) == $$ ))"
grep -E '^(SigBlk|SigIgn):' /proc/self/status  # grep's own: what bash passed on
echo "fds=$(ls /proc/$$/fd | sort -n | tr '\n' ' ')"
env | grep -v -E '^(PWD|SHLVL|_|OLDPWD)=' | sort
read -r line || echo "stdin=empty"
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A launcher built from this checkout into a fresh directory (not the shared cache)."""
    directory = tmp_path_factory.mktemp("launcher")
    os.chmod(directory, 0o700)
    try:
        return launcher.build_launcher(os.path.join(str(directory), "joblaunch"))
    except launcher.BuildError as exc:
        pytest.fail(f"this machine has a C compiler (PLATFORM.md); the build failed: {exc}")


def spec_for(tmp_path: Any, name: str, command: str = PROBE, **extra: Any) -> dict[str, Any]:
    spec = {
        "command": command,
        "shell": "/bin/bash",
        "workdir": str(tmp_path),
        "log_path": os.path.join(str(tmp_path), f"{name}.log"),
        "env": {"PATH": "/usr/bin:/bin", "ONLY_THIS": "yes", "SPACES": "a b  c"},
        "procs_files": [],
        "data_limit": 512 * 1024 * 1024,
        "file_mounts": None,
    }
    spec.update(extra)
    return spec


def run_to_end(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def started_by(how: str, built: str, spec: dict[str, Any]) -> tuple[int, str]:
    """Start ``spec`` the way an executor does (``how``: native or fork); (exit code, log)."""
    # An executor ignores nothing, but a job must not inherit a parent's ignored signals or
    # blocked mask either: give this parent some of both (the fork resets them too).
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        if how == "native":
            ready = jobproc.ReadyChild.spawn(built, frozenset(), "test: ready")
            assert ready.start(spec)
            pid = ready.pid
        else:
            pid = jobproc.fork_job(spec, frozenset())
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    code = run_to_end(pid)
    with open(spec["log_path"]) as handle:
        return code, handle.read()


def test_a_job_sees_the_same_start_from_the_launcher_as_from_the_fork(
    tmp_path: Any, built: str
) -> None:
    native = started_by("native", built, spec_for(tmp_path, "native"))
    forked = started_by("fork", built, spec_for(tmp_path, "fork"))
    assert native == forked
    code, log = native
    assert code == 0
    lines = log.splitlines()
    assert f"cwd={tmp_path}" in lines
    assert "data=524288" in lines  # RLIMIT_DATA in KiB
    assert "oom=500" in lines and "session=1" in lines
    assert "SigBlk:\t0000000000000000" in lines and "SigIgn:\t0000000000000000" in lines
    assert "fds=0 1 2 3 " in lines  # 3: the ls of /proc/$$/fd itself
    assert "ONLY_THIS=yes" in lines and "SPACES=a b  c" in lines and "PATH=/usr/bin:/bin" in lines
    assert not any(line.startswith(("SKY_MINI", "PYTEST")) for line in lines)
    assert "stdin=empty" in lines


def test_a_missing_workdir_and_a_missing_shell_fail_as_they_do_from_the_fork(
    tmp_path: Any, built: str
) -> None:
    for how in ("native", "fork"):
        spec = spec_for(tmp_path, f"{how}-nodir", workdir=str(tmp_path / "gone"))
        code, log = started_by(how, built, spec)
        assert code == 127
        assert log.startswith(f"sky-mini: cannot enter workdir {tmp_path / 'gone'}: "), log
        assert "No such file or directory" in log
        spec = spec_for(tmp_path, f"{how}-noshell", shell=str(tmp_path / "no-shell"))
        code, log = started_by(how, built, spec)
        assert code == 127 and log.startswith("sky-mini: cannot start the job: "), log


def test_a_ready_launcher_joins_its_groups_before_the_job_and_exits_on_a_bare_eof(
    tmp_path: Any, built: str
) -> None:
    procs_file = tmp_path / "cgroup.procs"  # a plain file stands in for the group's list
    procs_file.write_text("")
    ready = jobproc.ReadyChild.spawn(built, frozenset(), "test: ready", (str(procs_file),))
    wait_for(lambda: procs_file.read_text() == str(ready.pid), 10, "the launcher joined")
    with open(f"/proc/{ready.pid}/cmdline", "rb") as handle:
        assert handle.read().split(b"\0")[0] == b"sky-mini: test: ready"  # procs.title_of
    ready.close()
    assert run_to_end(ready.pid) == 0


def test_specs_the_launcher_cannot_carry_go_to_the_fork(tmp_path: Any) -> None:
    assert jobproc.encode_spec(spec_for(tmp_path, "x")) is not None
    assert jobproc.encode_spec(spec_for(tmp_path, "x", file_mounts={"a": "b"})) is None
    assert jobproc.encode_spec(spec_for(tmp_path, "x", env={"A=B": "1"})) is None
    assert jobproc.encode_spec(spec_for(tmp_path, "x", command="echo \0")) is None


def test_only_a_launcher_nobody_else_can_change_is_used(tmp_path: Any, built: str) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    path = directory / "joblaunch"
    shutil.copyfile(built, str(path))
    path.chmod(0o755)
    assert launcher.is_trusted_executable(str(path))
    path.chmod(0o775)
    assert not launcher.is_trusted_executable(str(path))  # group-writable file
    path.chmod(0o755)
    directory.chmod(0o777)
    assert not launcher.is_trusted_executable(str(path))  # anyone may replace it
    directory.chmod(0o700)
    os.symlink(str(path), str(directory / "link"))
    assert not launcher.is_trusted_executable(str(directory / "link"))
    assert stat.S_ISREG(os.stat(str(path)).st_mode)


def server_launcher(sky: SkyMini) -> str:
    status = json.loads(sky.run("api", "status", "--json", check=True).out)
    value: str = status["job_launcher"]
    return value


@pytest.mark.parametrize("compiler", ["cc", "none"])
def test_the_server_builds_the_launcher_or_says_why_not_and_jobs_run_either_way(
    sky: SkyMini, tmp_path: Any, compiler: str
) -> None:
    sky.extra_env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # nothing built there yet
    if compiler == "none":
        sky.extra_env["CC"] = str(tmp_path / "no-such-cc")
    sky.serve_foreground("--executors", "1")
    note = server_launcher(sky)
    job = sky.run("jobs", "launch", "--", "echo", "ran", check=True)
    assert "ran" in job.out
    if compiler == "cc":
        assert note.startswith("native (") and "built now" in note, note
        (built_file,) = os.listdir(tmp_path / "xdg" / "sky-mini")
        assert built_file.startswith("joblaunch-")
    else:
        assert note.startswith("python fork: cannot build the native job launcher"), note
        assert "no C compiler" in note and "no-such-cc" in note
        assert not os.path.exists(tmp_path / "xdg" / "sky-mini" / "joblaunch")


def test_the_launcher_source_builds_without_warnings(tmp_path: Any) -> None:
    out = str(tmp_path / "strict")
    built = subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out, launcher.SOURCE],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    by_hand = subprocess.run([out], capture_output=True, text=True)
    assert by_hand.returncode == launcher.USAGE_EXIT_CODE
    assert "started by a sky-mini executor" in by_hand.stderr
    assert sys.platform.startswith("linux")


@pytest.mark.parametrize("disabled", ["", "launcher"])
def test_a_job_the_launcher_cannot_carry_still_runs_in_its_slot_group(
    sky: SkyMini, tmp_path: Any, disabled: str
) -> None:
    """file_mounts need the Python fork: it must join the slot the ready child was in."""
    from sky_mini.cgroups import detect_capabilities

    if detect_capabilities().v1_memory_root is None:
        pytest.skip("no writable v1 memory cgroup on this host (slots are v1 only)")
    if disabled:
        sky.extra_env["SKY_MINI_DISABLE"] = disabled
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("mounted\n")
    task = tmp_path / "task.yaml"
    target = tmp_path / "work" / "in"
    (tmp_path / "work").mkdir()
    task.write_text(
        f"workdir: {tmp_path / 'work'}\nfile_mounts: {{{target}: {tmp_path / 'data'}}}\n"
        "run: cat in/x.txt; grep ':memory:' /proc/self/cgroup\n"
    )
    sky.serve_foreground("--executors", "1")
    out = sky.run("jobs", "launch", str(task), check=True).out
    assert "mounted" in out
    assert f"/sky-mini-{sky.key}/slot-job-0" in out, out


def test_a_cached_launcher_that_no_longer_runs_is_built_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path, note = launcher.find_launcher(str(tmp_path / "home-cache"), frozenset())
    assert path is not None and "built now" in note
    path_again, note = launcher.find_launcher(str(tmp_path / "home-cache"), frozenset())
    assert path_again == path and "built now" not in note  # found, checked, used
    with open(path, "w") as handle:  # e.g. a cache shared with a machine of another libc
        handle.write("#!/bin/sh\nexit 1\n")
    os.chmod(path, 0o755)
    assert launcher.is_trusted_executable(path)  # trusted, but it does not run as it must
    path_again, note = launcher.find_launcher(str(tmp_path / "home-cache"), frozenset())
    assert path_again == path and "built now" in note
    assert launcher.runs_by_hand(path)
