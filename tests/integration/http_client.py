"""A tiny real HTTP client for the http component's tests (stdlib ``http.client``)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.helpers import SkyMini, wait_for


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_url(sky: SkyMini, timeout: float = 30) -> str:
    """The URL the http component listens on, as ``api status --json`` shows it."""

    def find() -> str | None:
        result = sky.run("api", "status", "--json")
        if result.code not in (0, 4):
            return None
        for row in result.json()["components"]:
            if row["name"] == "http" and row.get("url") and row["state"] == "running":
                return str(row["url"])
        return None

    url: str = wait_for(find, timeout, "the http component's URL in api status")
    return url


def http_row(sky: SkyMini) -> dict[str, Any]:
    rows = sky.run("api", "status", "--json").json()["components"]
    row: dict[str, Any] = next(r for r in rows if r["name"] == "http")
    return row


def get(
    url: str,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    host: str | None = None,
    timeout: float = 20,
) -> Reply:
    split = urlsplit(url)
    conn = http.client.HTTPConnection(split.hostname or "", split.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()
