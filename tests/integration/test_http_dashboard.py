"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, which
``./scripts/test`` installs when it runs as root) loads ``/`` from a server with real jobs
and a service, runs the page's script, and the test reads the rendered DOM. A screenshot is
saved to ``test-artifacts/dashboard.png`` (``SKY_MINI_TEST_ARTIFACTS`` moves it)."""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import SkyMini, wait_for
from tests.integration.http_client import get, http_url

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.environ.get("SKY_MINI_TEST_ARTIFACTS") or os.path.join(REPO, "test-artifacts")
HOG = f"{sys.executable} -c 'x = [bytearray(2**20) for _ in range(500)]; print(len(x))'"
BROWSER_SECONDS = 180
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=8000",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):  # CI runs as root, so ./scripts/test must have installed it
            pytest.fail("chromium is missing in CI: ./scripts/test could not install it")
        pytest.skip("chromium is not installed (./scripts/test installs it when run as root)")
    return found


def browse(url: str, profile: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=BROWSER_SECONDS,
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(sky: SkyMini, *args: str) -> int:
    return int(sky.run("jobs", "launch", "--async", *args, check=True).out)


def service_ready(sky: SkyMini, name: str) -> dict[str, Any] | None:
    result = sky.run("services", "status", "--json")
    if result.code != 0:
        return None
    for row in result.json()["services"]:
        if row["name"] == name and row["status"] == "READY":
            return dict(row)
    return None


def start_service(sky: SkyMini) -> None:
    path = os.path.join(os.path.dirname(sky.home), "web.yaml")
    with open(path, "w") as handle:
        handle.write(
            "name: web\n"
            f"run: {sys.executable} -m http.server $PORT --bind 127.0.0.1\n"
            f"replicas: 2\nport: {free_port()}\nworkdir: .\n"
            "readiness_probe:\n  path: /\n  timeout_seconds: 2\n"
        )
    sky.run("services", "up", path, check=True)


def job_row(dom: str, job_id: int) -> str:
    match = re.search(
        rf'<tr data-job="{job_id}" data-status="([A-Z_]+)"[^>]*>(.*?)</tr>', dom, re.S
    )
    assert match, f"job {job_id} is not in the rendered queue"
    return f"{match.group(1)} {html.unescape(re.sub(r'<[^>]+>', ' ', match.group(2)))}"


def test_the_dashboard_shows_jobs_services_and_components(sky: SkyMini, tmp_path: Any) -> None:
    chromium()
    sky.serve_foreground("--http", "127.0.0.1:0")
    url = http_url(sky)
    start_service(sky)
    ok = launch(sky, "--name", "nightly-report", "--", "echo", "report written")
    hog = launch(sky, "--name", "train-model", "--memory", "64M", "--", "sh", "-c", HOG)
    sky.wait_job(hog, ("KILLED",), timeout=60)
    bad = launch(sky, "--name", "etl-import", "--", "sh", "-c", "echo 'no such table'; exit 3")
    sky.wait_job(ok, ("SUCCEEDED",))
    sky.wait_job(bad, ("FAILED",))
    running = launch(sky, "--name", "web-crawler", "--", "sh", "-c", "echo crawling; sleep 600")
    sky.wait_job(running, ("RUNNING",))
    wait_for(lambda: service_ready(sky, "web"), 60, "service web READY")
    assert get(url, "/api/jobs").status == 200

    result = browse(url + "/", str(tmp_path / "profile"), "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "updated " in dom, "the page's script did not finish a refresh:\n" + dom[-3000:]
    assert job_row(dom, ok).startswith("SUCCEEDED")
    failed = job_row(dom, bad)
    assert failed.startswith("FAILED") and "exit_code" in failed
    killed = job_row(dom, hog)
    assert killed.startswith("KILLED") and "memory_limit" in killed and "64 MiB" in killed
    assert job_row(dom, running).startswith("RUNNING")
    assert re.search(r'data-service="web">.*?s-READY', dom, re.S), "service web not READY"
    assert "2/2 ready" in dom
    for component in ("server", "executor job-0", "http", "services-controller"):
        assert f"<td>{component}" in dom, component
    assert "Needs attention" in dom and "etl-import" in dom
    assert "no such table" in dom  # the newest failure's log tail is shown

    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "dashboard.png")
    if os.path.exists(shot):
        os.unlink(shot)
    result = browse(
        url + "/", str(tmp_path / "profile2"), f"--screenshot={shot}", "--window-size=1280,1180"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(shot, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
