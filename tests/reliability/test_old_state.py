"""Old state (STYLE 19): a home written by every past schema still loads and runs.

``tests/fixtures/state-v1/`` was written by schema 1 (see its README). Copied into a fresh
home, a server must adopt it: finished jobs keep their status, the job that was running when
its server died ends KILLED/supervisor_lost, pending jobs run, and new IDs continue after it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers import SkyMini

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
VERSIONS = sorted(d for d in os.listdir(FIXTURES) if d.startswith("state-v"))


def install_fixture(name: str, home: str) -> None:
    shutil.copytree(os.path.join(FIXTURES, name), home, ignore=shutil.ignore_patterns("*.md"))
    for root, _dirs, files in os.walk(home):
        os.chmod(root, 0o700)
        for file in files:
            path = os.path.join(root, file)
            os.chmod(path, 0o600)
            if file.endswith(".json"):
                with open(path) as handle:
                    text = handle.read()
                with open(path, "w") as handle:
                    handle.write(text.replace("@HOME@", home))


def test_there_is_a_fixture_for_the_current_schema() -> None:
    from sky_mini.models import SCHEMA_VERSION

    assert f"state-v{SCHEMA_VERSION}" in VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_old_state_loads_and_pending_jobs_run(sky: SkyMini, version: str) -> None:
    install_fixture(version, sky.home)
    # The CLI reads it without a server.
    before = {r["id"]: r for r in sky.run("jobs", "queue", "--all", "--json", check=True).json()}
    assert {i: r["status"] for i, r in before.items()} == {
        1: "SUCCEEDED",
        2: "FAILED",
        3: "RUNNING",
        4: "CANCELLED",
        5: "PENDING",
        6: "PENDING",
    }
    assert sky.run("jobs", "logs", "1", "--no-follow", check=True).out == "hello from v1\n"
    assert before[2]["exit_code"] == 3
    sky.serve_foreground()
    assert sky.wait_job(5, ("SUCCEEDED",))["status"] == "SUCCEEDED"
    assert sky.wait_job(6, ("FAILED",))["exit_code"] == 5
    lost = sky.wait_job(3, ("KILLED",))
    assert lost["reason_code"] == "supervisor_lost"
    assert sky.run("jobs", "logs", "5", "--no-follow", check=True).out == "pending a\n"
    new = sky.run("jobs", "launch", "--async", "--cpus", "0.1", "--", "true", check=True)
    assert int(new.out) == 7
    sky.wait_job(7, ("SUCCEEDED",))
    after = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert [r["status"] for r in after] == [
        "SUCCEEDED",
        "FAILED",
        "KILLED",
        "CANCELLED",
        "SUCCEEDED",
        "FAILED",
        "SUCCEEDED",
    ]
    assert sky.run("jobs", "wait", "1").code == 0
    assert sky.run("jobs", "wait", "2").code == 3
