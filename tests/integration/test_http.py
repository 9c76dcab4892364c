"""The http component end to end: a real server started by the CLI with --http, a real HTTP
client. Endpoints, errors, the Prometheus format (prometheus_client's parser), the textfile,
auth off loopback, the Host check, bounds, slow clients, and its life as a tied component."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import SkyMini, pid_alive, same_process, wait_for
from tests.integration.http_client import Reply, get, http_row, http_url

HOG = f"{sys.executable} -c 'x = [bytearray(2**20) for _ in range(500)]; print(len(x))'"
SECRET = "s3cr3t-value-never-served"


def launch(sky: SkyMini, *args: str) -> int:
    return int(sky.run("jobs", "launch", "--async", *args, check=True).out)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def token_of(sky: SkyMini) -> str:
    with open(os.path.join(sky.home, "http.token")) as handle:
        return handle.read().strip()


def assert_json_error(reply: Reply, status: int, *words: str) -> None:
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    message = reply.json()["error"]
    assert "Traceback" not in message
    for word in words:
        assert word in message, message


@pytest.fixture
def loopback(sky: SkyMini) -> Iterator[str]:
    sky.extra_env["I17_CLIENT_SECRET"] = SECRET
    sky.serve_foreground("--http", "127.0.0.1:0")
    yield http_url(sky)


def test_api_endpoints_match_the_cli_and_carry_no_secrets(sky: SkyMini, loopback: str) -> None:
    ok = launch(sky, "--env", f"TOKEN={SECRET}", "--", "echo", "hello")
    bad = launch(sky, "--", "sh", "-c", "echo oops; exit 3")
    sky.wait_job(ok, ("SUCCEEDED",))
    sky.wait_job(bad, ("FAILED",))

    status = get(loopback, "/api/status")
    assert status.status == 200
    cli = sky.run("api", "status", "--json", check=True).json()
    assert status.json()["instance_id"] == cli["instance_id"]
    assert status.json()["health"] == "healthy"
    assert [c["name"] for c in status.json()["components"]] == [
        c["name"] for c in cli["components"]
    ]

    jobs = get(loopback, "/api/jobs").json()
    assert [(j["id"], j["status"]) for j in jobs] == [(ok, "SUCCEEDED"), (bad, "FAILED")]
    assert jobs == sky.run("jobs", "queue", "--json", check=True).json()
    assert [j["id"] for j in get(loopback, "/api/jobs?status=failed").json()] == [bad]
    assert [j["id"] for j in get(loopback, "/api/jobs?status=SUCCEEDED,FAILED&limit=1").json()] == [
        bad
    ]
    one = get(loopback, f"/api/jobs/{bad}").json()
    assert one["exit_code"] == 3 and one["reason_code"] == "exit_code"
    assert "env" not in one and "task" not in one
    assert get(loopback, f"/api/jobs/{ok}/log?tail=1").json()["lines"] == ["hello"]
    assert get(loopback, f"/api/jobs/{bad}/log").json()["lines"] == ["oops"]

    bodies = [get(loopback, p).body for p in ("/api/status", "/api/jobs", f"/api/jobs/{ok}")]
    bodies += [get(loopback, "/metrics").body, get(loopback, "/api/services").body]
    for body in bodies:
        assert SECRET.encode() not in body


def test_bad_ids_and_parameters_are_json_errors(sky: SkyMini, loopback: str) -> None:
    assert_json_error(get(loopback, "/api/jobs/abc"), 400, "'abc' is not a job ID")
    assert_json_error(get(loopback, "/api/jobs/%C2%B2"), 400, "not a job ID")
    assert_json_error(get(loopback, "/api/jobs/999"), 404, "no job 999")
    assert_json_error(get(loopback, "/api/jobs/999/log"), 404, "no job 999")
    assert_json_error(get(loopback, "/api/jobs?limit=0"), 400, "'limit'")
    assert_json_error(get(loopback, "/api/jobs?limit=ten"), 400, "'limit'")
    assert_json_error(get(loopback, "/api/jobs?status=BOGUS"), 400, "BOGUS", "PENDING")
    assert_json_error(get(loopback, "/api/jobs?sort=id"), 400, "sort", "allowed: status, limit")
    assert_json_error(get(loopback, "/api/jobs?limit=1&limit=2"), 400, "once")
    assert_json_error(get(loopback, "/api/jobs/1/log?tail=-1"), 400, "'tail'")
    assert_json_error(get(loopback, "/api/nothing"), 404, "no such endpoint")
    assert_json_error(get(loopback, "/nothing"), 404, "no such page")


def test_nothing_writes_and_requests_are_bounded(sky: SkyMini, loopback: str) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        reply = get(loopback, "/api/jobs", method=method)
        assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"
    assert_json_error(get(loopback, "/api/jobs", headers={"Content-Length": "5"}), 413)
    huge = get(loopback, "/api/status", headers={"X-Filler": "x" * 9000})
    assert_json_error(huge, 431, "8 KiB")
    assert_json_error(get(loopback, "/api/jobs?" + "a" * 3000), 414)
    head = get(loopback, "/api/status", method="HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
    assert sky.run("jobs", "queue", "--json", check=True).json() == []


def test_metrics_parse_and_the_textfile_is_written(sky: SkyMini, loopback: str) -> None:
    ok = launch(sky, "--", "echo", "fine")
    bad = launch(sky, "--", "false")
    hog = launch(sky, "--memory", "64M", "--", "sh", "-c", HOG)
    for job_id, want in ((ok, "SUCCEEDED"), (bad, "FAILED"), (hog, "KILLED")):
        sky.wait_job(job_id, (want,), timeout=60)
    reply = get(loopback, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(reply.body.decode())
    local = (("infra", "local"),)
    assert found[("sky_mini_up", ())] == 1
    assert found[("sky_mini_jobs", (*local, ("status", "SUCCEEDED")))] == 1
    assert found[("sky_mini_jobs", (*local, ("status", "FAILED")))] == 1
    assert found[("sky_mini_jobs", (*local, ("status", "KILLED")))] == 1
    assert found[("sky_mini_jobs_killed", (("reason_code", "memory_limit"),))] == 1
    assert found[("sky_mini_queue_depth", ())] == 0
    assert found[("sky_mini_jobs_running", ())] == 0
    executors = [c for c in http_status(loopback)["components"] if c["kind"] == "job-executor"]
    assert found[("sky_mini_executors", (("state", "idle"),))] == len(executors)
    assert found[("sky_mini_job_duration_seconds_count", ())] == 3
    assert found[("sky_mini_job_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert found[("sky_mini_job_peak_memory_bytes_count", ())] == 3
    assert found[("sky_mini_job_peak_memory_bytes_sum", ())] >= 64 * 2**20
    assert found[("sky_mini_services_controller_up", ())] == 0

    path = os.path.join(sky.home, "metrics.prom")

    def textfile_has_all_three() -> bool:
        with contextlib.suppress(OSError):
            with open(path) as handle:
                parsed = samples(handle.read())
            return parsed.get(("sky_mini_job_duration_seconds_count", ())) == 3
        return False

    wait_for(textfile_has_all_three, 40, "metrics.prom with the three finished jobs")
    leftovers = [n for n in os.listdir(sky.home) if n.endswith(".tmp")]
    assert leftovers == []

    sky.run("api", "stop", check=True)  # the file outlives the server: it must say so
    with open(path) as handle:
        assert samples(handle.read())[("sky_mini_up", ())] == 0


def test_the_cron_path_never_imports_the_http_component(sky: SkyMini) -> None:
    sky.serve_foreground("--http", "127.0.0.1:0")
    env = dict(sky.env, PYTHONPROFILEIMPORTTIME="1")
    result = subprocess.run(
        [sys.executable, "-m", "sky_mini", "jobs", "launch", "--async", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "sky_mini.jobs" in imported  # the check does see the modules the CLI loads
    assert not [m for m in imported if m.startswith(("sky_mini.http", "sky_mini.server"))]
    assert "psutil" not in imported


def http_status(url: str) -> dict[str, object]:
    data: dict[str, object] = get(url, "/api/status").json()
    return data


def test_host_header_is_checked_on_loopback(sky: SkyMini, loopback: str) -> None:
    port = loopback.rsplit(":", 1)[1]
    assert get(loopback, "/api/status", host=f"localhost:{port}").status == 200
    assert_json_error(get(loopback, "/api/status", host=f"evil.example:{port}"), 403, "Host")
    assert_json_error(get(loopback, "/", host="127.0.0.1:1"), 403)
    assert not os.path.exists(os.path.join(sky.home, "http.token"))  # loopback needs none


def test_off_loopback_every_request_needs_the_token(sky: SkyMini) -> None:
    sky.serve_foreground("--http", "0.0.0.0:0")
    url = http_url(sky).replace("0.0.0.0", "127.0.0.1")
    mode = stat.S_IMODE(os.stat(os.path.join(sky.home, "http.token")).st_mode)
    assert mode == 0o600
    token = token_of(sky)
    missing = get(url, "/api/status")
    wrong = get(url, "/api/status", headers={"Authorization": "Bearer not-the-token"})
    for reply in (missing, wrong, get(url, "/metrics"), get(url, "/")):
        assert reply.status == 401
        assert reply.body == b'{"error":"unauthorized"}'  # the same, whatever was wrong
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert get(url, "/?token=not-the-token").status == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert get(url, "/api/status", headers=bearer).status == 200
    assert get(url, "/metrics", headers=bearer).status == 200
    login = get(url, f"/?token={token}")
    assert login.status == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in login.headers["set-cookie"]
    page = get(url, "/", headers={"Cookie": cookie})
    assert page.status == 200 and b"<title>sky-mini</title>" in page.body
    assert get(url, "/api/jobs", headers={"Cookie": cookie}).status == 200
    assert get(url, "/api/jobs", headers={"Cookie": "sky_mini_token=wrong"}).status == 401


def open_slow_clients(url: str, count: int) -> list[socket.socket]:
    """Connections that send half a request head and then nothing (slow-loris)."""
    port = int(url.rsplit(":", 1)[1])
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        clients.append(sock)
    return clients


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slow_loris_does_not_stop_jobs_being_dispatched(sky: SkyMini, loopback: str) -> None:
    clients = open_slow_clients(loopback, 150)  # more than the component's connection cap
    try:
        job = launch(sky, "--", "echo", "dispatched")
        sky.wait_job(job, ("SUCCEEDED",), timeout=30)
        # The oldest half-open connections are evicted, so a real client still gets in.
        assert get(loopback, "/api/status").status == 200
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.parametrize("deadline_on", [True, False], ids=["deadline", "negative-control"])
def test_a_slow_client_is_cut_off_at_the_deadline(sky: SkyMini, deadline_on: bool) -> None:
    sky.extra_env["SKY_MINI_HTTP_REQUEST_SECONDS"] = "1"
    if not deadline_on:
        sky.extra_env["SKY_MINI_DISABLE"] = "http_deadline"
    sky.serve_foreground("--http", "127.0.0.1:0")
    (client,) = open_slow_clients(http_url(sky), 1)
    try:
        if deadline_on:
            wait_for(lambda: closed_by_peer(client), 15, "the slow connection closed")
        else:
            with pytest.raises(AssertionError, match="timed out"):
                wait_for(lambda: closed_by_peer(client), 4, "the slow connection closed")
    finally:
        client.close()


def test_http_is_restarted_when_it_dies_and_dies_with_the_server(sky: SkyMini) -> None:
    server = sky.serve_foreground("--http", "127.0.0.1:0")
    http_url(sky)
    first = http_row(sky)
    assert first["state"] == "running" and first["restarts"] == 0
    assert f"http: {first['url']} (/metrics, /api, dashboard)" in sky.run("api", "status").out
    assert same_process(first["pid"], first["create_time"])
    os.kill(first["pid"], signal.SIGKILL)  # our server's own child
    wait_for(lambda: http_row(sky)["restarts"] == 1 and http_row(sky)["url"], 30, "restart")
    url = http_url(sky)
    assert get(url, "/api/status").status == 200
    second = http_row(sky)
    assert second["pid"] != first["pid"]
    os.kill(server.pid, signal.SIGKILL)
    server.wait(10)
    wait_for(lambda: not pid_alive(second["pid"]), 10, "http to die with the server")


def test_negative_control_without_pdeathsig_and_pipe_http_outlives_the_server(
    sky: SkyMini,
) -> None:
    sky.extra_env["SKY_MINI_DISABLE"] = "pdeathsig,pipe"
    server = sky.serve_foreground("--http", "127.0.0.1:0")
    url = http_url(sky)
    row = http_row(sky)
    os.kill(server.pid, signal.SIGKILL)
    server.wait(10)
    try:
        with pytest.raises(AssertionError, match="timed out"):
            wait_for(lambda: not pid_alive(row["pid"]), 4, "http to die with the server")
        assert get(url, "/api/jobs").status == 200  # the check above does catch a survivor
    finally:
        if same_process(row["pid"], row["create_time"]):
            os.kill(row["pid"], signal.SIGKILL)


def test_bad_listen_addresses_are_usage_errors(sky: SkyMini) -> None:
    for value in ("nonsense", "127.0.0.1:99999", ":8080", "127.0.0.1:http"):
        result = sky.run("serve", "--foreground", "--http", value)
        assert result.code == 2, result
        assert "--http" in result.err and "Traceback" not in result.err
    os.makedirs(sky.home, mode=0o700, exist_ok=True)
    with open(os.path.join(sky.home, "config.yaml"), "w") as handle:
        handle.write("http:\n  listen: 8080\n")
    result = sky.run("serve", "--foreground")
    assert result.code == 2 and "http.listen" in result.err, result
    assert sky.status() is None


def test_a_taken_port_is_reported_in_api_status(sky: SkyMini) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sky.serve_foreground("--http", f"127.0.0.1:{port}")

        def reported() -> bool:
            row = http_row(sky)
            return "Address already in use" in str(row.get("error"))

        wait_for(reported, 30, "the bind error in api status")
        result = sky.run("api", "status")
        assert result.code == 4, result  # degraded: it should run and cannot
        assert f"http: not listening on 127.0.0.1:{port}: cannot listen" in result.out
