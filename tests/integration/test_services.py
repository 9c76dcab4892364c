"""Services end to end: a real server, controller, replicas (python -m http.server), real HTTP.

Knobs used here (documented in docs/SERVICES.md): ``SKY_MINI_SERVICE_BACKOFF_SECONDS`` makes
the first restart delay short, and ``services.controller.idle_minutes`` in the test home's
config.yaml makes the controller's idle autostop take seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sys
import time
from typing import Any

import pytest

from tests.helpers import SkyMini, marked_pids, pid_alive, same_process, wait_for

PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_yaml(sky: SkyMini, name: str, text: str) -> str:
    path = os.path.join(os.path.dirname(sky.home), f"{name}.yaml")
    with open(path, "w") as handle:
        handle.write(text)
    return path


def http_service(sky: SkyMini, name: str, port: int, replicas: int = 2) -> str:
    return write_yaml(
        sky,
        name,
        f"name: {name}\n"
        f"run: {PY} -m http.server $PORT --bind 127.0.0.1\n"
        f"replicas: {replicas}\n"
        f"port: {port}\n"
        "workdir: .\n"
        "readiness_probe:\n  path: /\n  timeout_seconds: 2\n",
    )


def set_config(sky: SkyMini, text: str) -> None:
    os.makedirs(sky.home, mode=0o700, exist_ok=True)
    with open(os.path.join(sky.home, "config.yaml"), "w") as handle:
        handle.write(text)


def read(sky: SkyMini, filename: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(sky.home, "services", filename)) as handle:
            data: dict[str, Any] = json.load(handle)
            return data
    except (OSError, ValueError):
        return None


def facts(sky: SkyMini, name: str) -> dict[str, Any] | None:
    return read(sky, f"{name}.state.json")


def controller(sky: SkyMini) -> dict[str, Any] | None:
    return read(sky, "_controller.json")


def wait_ready(sky: SkyMini, name: str, count: int, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        data = facts(sky, name)
        ctl = controller(sky)
        if not data or not ctl or data["status"] != "READY":
            return None
        if data["controller_pid"] != ctl["pid"] or not pid_alive(ctl["pid"]):
            return None  # facts left by a controller that is gone
        ready = [r for r in data["replicas"] if r["state"] == "READY"]
        return data if len(ready) == count else None

    result: dict[str, Any] = wait_for(check, timeout, f"{name}: {count} replica(s) READY")
    return result


def get(port: int, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def replica_log(sky: SkyMini, name: str, index: int) -> str:
    with open(os.path.join(sky.home, "services", name, f"replica-{index}.log")) as handle:
        return handle.read()


def test_replicas_load_balancer_restart_down_and_idle_autostop(sky: SkyMini) -> None:
    set_config(sky, "services:\n  controller:\n    idle_minutes: 0.1\n")
    sky.extra_env["SKY_MINI_SERVICE_BACKOFF_SECONDS"] = "0.2"
    sky.serve_foreground()
    port = free_port()
    up = sky.run("services", "up", http_service(sky, "web", port), check=True)
    assert f"127.0.0.1:{port}" in up.out
    state = wait_ready(sky, "web", 2)
    pids = [r["pid"] for r in state["replicas"]]

    # 20 requests through the load balancer all succeed and reach both replicas.
    assert [get(port, f"/?req={i}") for i in range(20)] == [200] * 20
    wait_for(
        lambda: all("GET /?req=" in replica_log(sky, "web", i) for i in (1, 2)),
        10,
        "both replicas served requests",
    )
    logs = sky.run("services", "logs", "web", "--replica", "2", check=True).out
    assert "GET /?req=" in logs

    # Kill replica 1 (a process this test started, checked by create time): the load
    # balancer keeps answering and the replica comes back after its backoff.
    victim = state["replicas"][0]
    assert same_process(victim["pid"], victim["create_time"])
    os.kill(victim["pid"], signal.SIGKILL)
    assert [get(port, f"/?after={i}") for i in range(10)] == [200] * 10

    def restarted() -> dict[str, Any] | None:
        data = facts(sky, "web")
        replica: dict[str, Any] | None = data["replicas"][0] if data else None
        if replica and replica["state"] == "READY" and replica["pid"] != victim["pid"]:
            return replica
        return None

    replica = wait_for(restarted, 30, "replica 1 restarted and READY")
    assert replica["restarts"] == 1
    assert "SIGKILL" in replica["last_exit_reason"]
    status = sky.run("services", "status", check=True).out
    assert "web" in status and "READY" in status and "2/2" in status
    pids = [r["pid"] for r in wait_ready(sky, "web", 2)["replicas"]]

    # services down: replicas and the load balancer are gone at once; the controller
    # stays and counts down.
    ctl = controller(sky)
    assert ctl is not None
    down = sky.run("services", "down", "web", check=True)
    assert "is down" in down.out and "stops by itself after 6s" in down.out
    assert not any(pid_alive(p) for p in pids)
    assert refused(port)
    status = sky.run("services", "status", check=True).out
    assert f"services-controller: pid {ctl['pid']}" in status
    assert "autostop in" in status, status
    assert pid_alive(ctl["pid"])

    # ... and then exits by itself (idle_minutes: 0.1 = 6 s).
    wait_for(lambda: not pid_alive(ctl["pid"]), 30, "controller idle autostop")
    final = controller(sky)
    assert final is not None and final["state"] == "stopped"
    assert final["stop_reason"] == "idle"
    assert "not running" in sky.run("services", "status", check=True).out

    def row() -> dict[str, Any] | None:
        api = sky.run("api", "status", "--json")
        found = [c for c in api.json()["components"] if c["kind"] == "services-controller"]
        return found[0] if found and found[0]["state"] == "stopped" else None

    component = wait_for(row, 10, "api status shows the controller stopped")
    assert component["should_run"] is False and component["restarts"] == 0
    assert sky.run("api", "status").code == 0  # a stopped idle controller is not degraded


def test_down_services_controller_refuses_while_up_unless_forced(sky: SkyMini) -> None:
    sky.serve_foreground()
    port = free_port()
    path = write_yaml(
        sky,
        "tcp",
        f"name: tcp\nrun: {PY} -m http.server $PORT --bind 127.0.0.1\nport: {port}\n",
    )
    sky.run("services", "up", path, check=True)
    (replica,) = wait_ready(sky, "tcp", 1)["replicas"]  # no probe: TCP connect = READY
    ctl = controller(sky)
    assert ctl is not None

    refused_result = sky.run("down", "services-controller")
    assert refused_result.code == 1
    assert "tcp" in refused_result.err and "--force" in refused_result.err
    assert "Traceback" not in refused_result.err
    assert pid_alive(replica["pid"]) and pid_alive(ctl["pid"])

    forced = sky.run("down", "services-controller", "--force")
    assert forced.code == 0, forced
    assert "tcp" in forced.out and "stopped" in forced.out
    assert not pid_alive(replica["pid"]) and not pid_alive(ctl["pid"])
    assert refused(port)
    assert "not running" in sky.run("services", "status", check=True).out


def test_failing_replica_ends_failed_and_memory_limit_is_reported(sky: SkyMini) -> None:
    sky.extra_env["SKY_MINI_SERVICE_BACKOFF_SECONDS"] = "0.05"
    sky.serve_foreground()
    crash_port = free_port()
    crash = write_yaml(
        sky,
        "crash",
        f"name: crash\nrun: {PY} -c 'import sys; sys.exit(3)'\nport: {crash_port}\n",
    )
    hog = write_yaml(
        sky,
        "hog",
        "name: hog\n"
        f"run: {PY} -c 'import signal; b = bytearray(300 * 2**20); signal.pause()'\n"
        "resources:\n  memory: 50M\n",
    )
    sky.run("services", "up", crash, check=True)
    sky.run("services", "up", hog, check=True)

    failed = wait_for(
        lambda: (f := facts(sky, "crash")) and f["status"] == "FAILED" and f, 30, "crash FAILED"
    )
    (replica,) = failed["replicas"]
    assert replica["state"] == "FAILED" and replica["last_exit_code"] == 3
    assert "exited with code 3" in failed["reason"]
    assert "failed 5 times" in failed["reason"]
    # No READY replica: the load balancer fails the client at once instead of hanging.
    # It accepts and resets; the reset may already be there when connect() returns.
    started = time.monotonic()
    with (
        contextlib.suppress(ConnectionResetError),
        socket.create_connection(("127.0.0.1", crash_port), timeout=10) as client,
    ):
        assert client.recv(1) == b""
    assert time.monotonic() - started < 5

    def memory_killed() -> dict[str, Any] | None:
        data = facts(sky, "hog")
        replica = data["replicas"][0] if data else None
        return replica if replica and replica["last_reason_code"] == "memory_limit" else None

    hog_replica = wait_for(memory_killed, 30, "hog replica killed for its memory limit")
    assert "limit 50 MiB" in hog_replica["last_exit_reason"]

    status = sky.run("services", "status", check=True).out
    assert "FAILED" in status and "exited with code 3" in status
    assert "out of memory" in status


def test_kill_9_of_the_server_leaves_nothing_and_the_service_comes_back(
    sky: SkyMini,
) -> None:
    server = sky.serve_foreground()
    port = free_port()
    sky.run("services", "up", http_service(sky, "web", port, replicas=1), check=True)
    (replica,) = wait_ready(sky, "web", 1)["replicas"]
    ctl = controller(sky)
    assert ctl is not None
    assert replica["pid"] in marked_pids(sky.key + ":")  # replicas carry the home's marker

    server.kill()  # SIGKILL: the one server this test started
    server.wait()
    killed_at = time.monotonic()
    wait_for(
        lambda: not marked_pids(sky.key + ":") and not pid_alive(ctl["pid"]),
        2.0,
        "every replica and the controller gone within 2 s",
    )
    assert time.monotonic() - killed_at < 2.0
    assert refused(port)

    sky.serve_foreground()
    (back,) = wait_ready(sky, "web", 1)["replicas"]
    assert back["pid"] != replica["pid"]
    assert get(port) == 200
    assert back["restarts"] == 1  # counted: it was running when the controller died


def test_negative_control_without_pdeathsig_and_pipe_the_check_catches_survivors(
    sky: SkyMini,
) -> None:
    """The kill -9 check above is real: with both ties off, replicas do outlive the server."""
    from sky_mini.config import DISABLE_CHOICES

    if "pipe" not in DISABLE_CHOICES:
        pytest.skip("needs 'pipe' in sky_mini.config.DISABLE_CHOICES (the controller honours it)")
    sky.extra_env["SKY_MINI_DISABLE"] = "pdeathsig,pipe,sweep"
    server = sky.serve_foreground()
    port = free_port()
    sky.run("services", "up", http_service(sky, "web", port, replicas=1), check=True)
    (replica,) = wait_ready(sky, "web", 1)["replicas"]
    ctl = controller(sky)
    assert ctl is not None and same_process(ctl["pid"], ctl["create_time"])
    server.kill()
    server.wait()
    try:
        with pytest.raises(AssertionError, match="gone within 2 s"):
            wait_for(
                lambda: not marked_pids(sky.key + ":") and not pid_alive(ctl["pid"]),
                2.0,
                "every replica and the controller gone within 2 s",
            )
        assert pid_alive(replica["pid"])
    finally:
        # Clean up what this test left on purpose: the controller it started (the
        # replicas die with it by their own PDEATHSIG; SkyMini.cleanup sweeps the rest).
        if same_process(ctl["pid"], ctl["create_time"]):
            os.kill(ctl["pid"], signal.SIGKILL)
        wait_for(lambda: not pid_alive(replica["pid"]), 5, "replica gone after cleanup")
