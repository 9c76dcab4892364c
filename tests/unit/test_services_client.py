"""Client side of services: desired-state records, intents, status data, CLI refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sky_mini import services as svc
from sky_mini.cli import run
from sky_mini.errors import SkyMiniError, SpecError, UsageError
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.spec import ResourceSpec, ServiceSpec, load_service


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    home = tmp_path / "home"
    monkeypatch.setenv("SKY_MINI_HOME", str(home))
    result = Paths(str(home))
    ensure_dirs(result)
    return result


def spec(name: str = "web", port: int | None = None) -> ServiceSpec:
    return ServiceSpec(name=name, run="python -m http.server $PORT", replicas=2, port=port)


def test_up_records_desired_state_and_bumps_the_generation(paths: Paths) -> None:
    first = svc.record_up(paths, spec(), "web.yaml", env={"A": "1"})
    second = svc.record_up(paths, spec(), "web.yaml", env={"A": "1"})
    assert (first.generation, second.generation) == (1, 2)
    path = svc.desired_path(paths.services_dir, "web")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    record = svc.read_desired(paths.services_dir, "web")
    assert record is not None and record.is_up and record.generation == 2
    assert record.spec == spec().to_json() and record.env == {"A": "1"}
    assert svc.up_services(paths.services_dir) == ["web"]


def test_up_refuses_a_port_another_up_service_uses(paths: Paths) -> None:
    svc.record_up(paths, spec("web", 8080), "web.yaml", env={})
    with pytest.raises(UsageError, match="already the load balancer port of service 'web'"):
        svc.record_up(paths, spec("api", 8080), "api.yaml", env={})
    assert svc.read_desired(paths.services_dir, "api") is None
    svc.record_down(paths, ["web"], every=False)
    svc.record_up(paths, spec("api", 8080), "api.yaml", env={})  # free again


def test_down_marks_down_and_names_unknown_services(paths: Paths) -> None:
    svc.record_up(paths, spec("web"), "web.yaml", env={})
    with pytest.raises(SkyMiniError, match=r"no service named 'nope' \(known services: web\)"):
        svc.record_down(paths, ["nope"], every=False)
    assert svc.record_down(paths, ["web"], every=False) == [("web", True)]
    assert svc.record_down(paths, ["web"], every=False) == [("web", False)]
    assert svc.up_services(paths.services_dir) == []


def test_controller_files_never_collide_with_a_service_named_controller(paths: Paths) -> None:
    svc.record_up(paths, spec("controller"), "c.yaml", env={})
    svc.write_controller_intent(paths, force=False)
    assert set(svc.read_all_desired(paths.services_dir)) == {"controller"}
    assert svc.is_desired_file("web.json") and not svc.is_desired_file("web.state.json")
    assert not svc.is_desired_file("_controller.json")
    assert svc.take_controller_intent(paths.services_dir) == {
        "schema": 1,
        "op": "stop",
        "force": False,
        "at": pytest.approx(0, abs=1e12),
    }
    assert svc.take_controller_intent(paths.services_dir) is None


def test_status_without_a_server_says_controller_init_and_hides_down_services(
    paths: Paths,
) -> None:
    svc.record_up(paths, spec("web", 8080), "web.yaml", env={})
    svc.record_up(paths, spec("old"), "old.yaml", env={})
    svc.record_down(paths, ["old"], every=False)
    data = svc.build_status(paths, None, 0.0)
    (row,) = data["services"]
    assert row["name"] == "web" and row["status"] == "CONTROLLER_INIT"
    assert "no sky-mini server is running" in row["reason"]
    assert row["endpoint"] == "127.0.0.1:8080" and row["total_replicas"] == 2
    assert data["controller"]["running"] is False


def test_stale_facts_of_a_dead_controller_are_not_trusted(paths: Paths) -> None:
    svc.record_up(paths, spec("web"), "web.yaml", env={})
    from sky_mini.state import atomic_write_json

    atomic_write_json(
        svc.controller_facts_path(paths.services_dir),
        {"pid": 999_999_999, "create_time": 1.0, "state": "running"},
    )
    atomic_write_json(
        svc.facts_path(paths.services_dir, "web"),
        {"status": "READY", "generation": 1, "controller_pid": 999_999_999, "replicas": []},
    )
    (row,) = svc.build_status(paths, {"components": []}, 0.0)["services"]
    assert row["status"] == "CONTROLLER_INIT"


def test_timeout_is_rejected_for_services() -> None:
    timed = ServiceSpec(name="web", run="x", resources=ResourceSpec(timeout_seconds=5))
    with pytest.raises(SpecError, match="resources.timeout"):
        svc.validate_for_service(timed, "web.yaml")


def test_cli_bad_file_exits_2_and_records_nothing(
    paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: web\nrun: x\nreplica: 2\n")
    assert run(["services", "up", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'replica'" in err and "did you mean 'replicas'" in err
    assert svc.read_all_desired(paths.services_dir) == {}
    timed = tmp_path / "timed.yaml"
    timed.write_text("name: web\nrun: x\nresources: {timeout: 5m}\n")
    assert run(["services", "up", str(timed)]) == 2
    assert "resources.timeout" in capsys.readouterr().err


def test_cli_down_controller_refuses_while_up_and_names_the_services(
    paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "web.yaml"
    good.write_text("name: web\nrun: sleep 100\n")
    svc.record_up(paths, load_service(str(good)), str(good), env={})
    svc.record_up(paths, spec("api"), "api.yaml", env={})
    assert run(["down", "services-controller"]) == 1
    err = capsys.readouterr().err
    assert "service(s) api, web are up" in err and "--force" in err
    assert svc.up_services(paths.services_dir) == ["api", "web"]
    assert not os.path.exists(svc.controller_intent_path(paths.services_dir))
    # --force with no controller running: the services are taken down, nothing to stop.
    assert run(["down", "services-controller", "--force"]) == 0
    out = capsys.readouterr().out
    assert "Took down service(s): api, web" in out and "not running" in out
    assert svc.up_services(paths.services_dir) == []


def test_cli_usage_errors(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["services", "down"]) == 2
    assert "NAME... or --all" in capsys.readouterr().err
    assert run(["services", "down", "ghost"]) == 1
    assert "no service named 'ghost'" in capsys.readouterr().err
    assert run(["down", "something-else"]) == 2
    assert run(["services", "logs", "ghost"]) == 1
