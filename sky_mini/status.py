"""``api status``: the server's snapshot plus what only a live look can tell (RSS, liveness)."""

from __future__ import annotations

from typing import Any

from sky_mini.procs import is_same_process


def build_report(snapshot: dict[str, Any], now: float) -> dict[str, Any]:
    """Add uptime, RSS and health to the server's status snapshot.

    Health is ``degraded`` when a component that should run is not running (its recorded
    PID is gone or now names another process).
    """
    import psutil

    report = dict(snapshot)
    report["uptime_seconds"] = now - float(snapshot.get("started_at") or now)
    components = []
    degraded = []
    server_row = {
        "name": "server",
        "kind": "server",
        "pid": snapshot.get("pid"),
        "create_time": snapshot.get("create_time"),
        "state": snapshot.get("state"),
        "job_id": None,
        "started_at": snapshot.get("started_at"),
        "restarts": 0,
        "should_run": True,
    }
    for row in [server_row, *snapshot.get("components", [])]:
        row = dict(row)
        row["rss_bytes"] = None
        if "healthy" in row:  # not a process of ours (a cluster's controller): its own word
            alive = bool(row["healthy"])
        elif is_same_process(row.get("pid"), row.get("create_time")):
            alive = True
            try:
                row["rss_bytes"] = psutil.Process(int(row["pid"])).memory_info().rss
            except psutil.Error:
                alive = False
        else:
            alive = False
        if row.get("started_at") and alive:
            row["uptime_seconds"] = now - float(row["started_at"])
        else:
            row["uptime_seconds"] = None
        if not alive and row.get("should_run"):
            if row.get("state") not in ("dead", "backoff", "unreachable"):
                row["state"] = "dead"
            degraded.append(row["name"])
        if row.get("autostop_at") is not None:
            row["autostop_in_seconds"] = max(0.0, float(row["autostop_at"]) - now)
        components.append(row)
    report["components"] = components
    report["degraded_components"] = degraded
    report["health"] = "degraded" if degraded else "healthy"
    autostop_at = snapshot.get("autostop_at")
    report["autostop_in_seconds"] = (
        max(0.0, float(autostop_at) - now) if autostop_at is not None else None
    )
    return report
