"""The local backend: a pool of named executor processes tied to the server.

``pool`` is the server's side (fork, route jobs, replace the dead); ``executor`` is the
executor process itself (runs one job at a time in its own group and cgroup).
"""

from __future__ import annotations

from sky_mini.server.backends.local.pool import LocalBackend, kill_job_leftovers

__all__ = ["LocalBackend", "kill_job_leftovers"]
