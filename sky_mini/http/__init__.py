"""The ``sky-mini: http`` component: /metrics, a read-only JSON API and the dashboard page.

It runs as its own tied child of the server (see ``sky_mini.server.http_component``) and
reads the same files the CLI reads, so a slow or hostile client never delays the server's
tick loop. Parts: ``auth`` (token, cookie, Host check), ``metrics`` (Prometheus text),
``api`` (JSON handlers), ``page`` (the dashboard and its assets), ``server`` (the bounded,
non-blocking HTTP loop). Standard library only.
"""
