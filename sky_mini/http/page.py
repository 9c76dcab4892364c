"""The dashboard: one HTML page, its script and stylesheet, served from this package.

No build step and no CDN: the files in ``static/`` are read once at start and served as they
are, so the page works on a machine without internet access.
"""

from __future__ import annotations

import os

from sky_mini.http.api import Response

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
ASSETS = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class Assets:
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        for route, (name, content_type) in ASSETS.items():
            with open(os.path.join(STATIC_DIR, name), "rb") as handle:
                self.files[route] = (handle.read(), content_type)

    def get(self, path: str) -> Response | None:
        found = self.files.get(path)
        if found is None:
            return None
        body, content_type = found
        headers = {"Content-Security-Policy": PAGE_POLICY} if path == "/" else {}
        return Response(200, body, content_type, headers)
