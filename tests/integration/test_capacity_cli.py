"""Submit-time fit check against the capacity a running server published (sky_mini.capacity)."""

from __future__ import annotations

import os

from tests.helpers import SkyMini


def test_fit_check_follows_a_config_edited_while_the_server_runs(sky: SkyMini) -> None:
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        cpus = 2
        sky.extra_env["SKY_MINI_CPUS"] = "2"
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    assert os.path.exists(os.path.join(sky.home, "server", "capacity.json"))
    ok = sky.run("jobs", "launch", "--async", "--cpus", str(cpus), "--", "true")
    assert ok.code == 0, ok
    with open(os.path.join(sky.home, "config.yaml"), "w") as handle:
        handle.write("resources:\n  cpus: 1\n")
    refused = sky.run("jobs", "launch", "--async", "--cpus", str(cpus), "--", "true")
    if "SKY_MINI_CPUS" in sky.extra_env:
        assert refused.code == 0  # the override wins over config.yaml, as before
        return
    assert refused.code == 2, refused
    assert "more than this machine can ever give (1 CPU)" in refused.err
    listed = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    assert [job["id"] for job in listed] == [int(ok.out)]


def test_a_dead_servers_capacity_is_not_trusted(sky: SkyMini) -> None:
    sky.run("api", "start", "--idle-minutes", "off", check=True)
    path = os.path.join(sky.home, "server", "capacity.json")
    with open(path) as handle:
        published = handle.read()
    sky.run("api", "stop", check=True)
    # What a server that had 64 CPUs would have left behind, had it been SIGKILLed.
    with open(path, "w") as handle:
        handle.write(published.replace('"cpus": ', '"cpus": 64.0, "x": '))
    refused = sky.run("jobs", "launch", "--async", "--cpus", "64", "--", "true")
    assert refused.code == 2, refused
    assert "more than this machine can ever give" in refused.err
