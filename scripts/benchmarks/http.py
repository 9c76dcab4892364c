"""Bench rows for the http component (``scripts/bench.py --only http``).

The package passes in the harness's ``Home`` class and ``footprint.footprint``.
Target (issue 17): with ``--http`` on at
``SKY_MINI_CPUS=1 SKY_MINI_MEMORY=2G``, the USS of every process (server, executor(s), http)
stays at or under 30 MiB.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from collections.abc import Callable
from typing import Any

USS_TARGET_MIB = 30.0
SCRAPES = 20
SMALL_BOX = {"SKY_MINI_CPUS": "1", "SKY_MINI_MEMORY": "2G"}


def http_row(home: Any) -> dict[str, Any] | None:
    for row in home.status().get("components", []):
        if row.get("kind") == "http" and row.get("state") == "running" and row.get("url"):
            return dict(row)
    return None


def wait_for_http(home: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = http_row(home)
        if row is not None:
            return row
        time.sleep(0.05)
    raise RuntimeError("the http component did not come up")


def scrape_ms(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        response.read()
    return (time.perf_counter() - start) * 1000


def run(b: Any, home_cls: Any, footprint: Callable[[Any], tuple[int, int, int]]) -> None:
    section = "9 http component"
    with home_cls("http", SMALL_BOX) as home:
        home.sky("serve", "--idle-minutes", "off", "--http", "127.0.0.1:0")
        home.wait_idle()
        row = wait_for_http(home)
        scrape_ms(row["url"])  # the first scrape reads every record once
        time.sleep(1.0)  # a benchmark, not a test: let start-up garbage settle
        count, rss, uss = footprint(home)
        uss_mib = uss / 2**20
        b.add(
            section,
            "--http on, CPUS=1 MEMORY=2G: RSS / USS",
            f"{rss / 2**20:.1f} / {uss_mib:.1f}",
            "MiB",
            f"{count} processes; USS target <= {USS_TARGET_MIB:g} MiB: "
            + ("met" if uss_mib <= USS_TARGET_MIB else "MISSED"),
        )
        times = [scrape_ms(row["url"]) for _ in range(SCRAPES)]
        b.add(
            section,
            "GET /metrics: median / max",
            f"{statistics.median(times):.1f} / {max(times):.1f}",
            "ms",
            f"{SCRAPES} scrapes, empty history",
        )
