"""The shared harness of scripts/bench: rows, temporary homes, timing and the report."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from sky_mini.cgroups import detect_capabilities, discard_base
from sky_mini.models import JobRecord, JobStatus
from sky_mini.paths import Paths, ensure_dirs
from sky_mini.procs import is_same_process, sweep_marked
from sky_mini.state import Store, atomic_write_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


SKY = (
    [os.path.join(BIN, "sky-mini")]
    if os.path.exists(os.path.join(BIN, "sky-mini"))
    else [sys.executable, "-m", "sky_mini"]
)


SHELL = shutil.which("bash") or "/bin/sh"  # what the executors run jobs with


HISTORY_JOBS = 10_000


FOLLOWERS = 128


@dataclass
class Row:
    section: str
    metric: str
    value: float | int | str
    unit: str = ""
    note: str = ""


@dataclass
class Bench:
    quick: bool
    verbose: bool
    rows: list[Row] = field(default_factory=list)

    @property
    def reps(self) -> int:
        return 7 if self.quick else 25

    def add(
        self, section: str, metric: str, value: float | int | str, unit: str = "", note: str = ""
    ) -> None:
        if isinstance(value, float):
            value = round(value, 1 if unit == "ms" else 2)
        self.rows.append(Row(section, metric, value, unit, note))
        if self.verbose:
            print(f"  {section}: {metric} = {value} {unit} {note}", file=sys.stderr)


BENCH_DISABLE_ENV = "SKY_MINI_BENCH_DISABLE"  # set by ``--disable``: passed on as below


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKY_MINI_")}
    if os.environ.get(BENCH_DISABLE_ENV):
        env["SKY_MINI_DISABLE"] = os.environ[BENCH_DISABLE_ENV]
    # Measure what an installed sky-mini costs: with cached bytecode (pip compiles it).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


class Home:
    """A temporary SKY_MINI_HOME with helpers to run the real CLI against it."""

    def __init__(self, label: str, extra_env: dict[str, str] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"sky-bench-{label}-")
        self.home = os.path.join(self.dir, "home")
        self.paths = Paths(self.home)
        self.env = base_env()
        self.env["SKY_MINI_HOME"] = self.home
        self.env.update(extra_env or {})
        self.key = hashlib.sha256(self.home.encode()).hexdigest()[:10]

    def sky(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        proc = subprocess.run(
            [*SKY, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"sky-mini {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def timed(self, *args: str) -> float:
        """Seconds one CLI call takes, wall clock."""
        start = time.perf_counter()
        self.sky(*args)
        return time.perf_counter() - start

    def start(self, *args: str) -> None:
        self.sky("api", "start", "--idle-minutes", "off", *args)

    def status(self) -> dict[str, Any]:
        with open(self.paths.server_status) as handle:
            data: dict[str, Any] = json.load(handle)
        return data

    def server_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            status = self.status()
            pid = int(status["pid"])
            if status.get("state") == "running" and is_same_process(pid, status["create_time"]):
                return pid
        return None

    def executor_pids(self) -> list[int]:
        """PIDs of the server's running components (job executors, services controller)."""
        return [int(c["pid"]) for c in self.status().get("components", []) if c.get("pid")]

    def job(self, job_id: int) -> dict[str, Any]:
        with open(self.paths.job_record(job_id)) as handle:
            data: dict[str, Any] = json.load(handle)
        return data

    def wait_terminal(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        terminal = {s.value for s in JobStatus if s.is_terminal}

        def check() -> dict[str, Any] | None:
            with contextlib.suppress(OSError, ValueError):
                record = self.job(job_id)
                if record["status"] in terminal:
                    return record
            return None

        result: dict[str, Any] = wait_for(check, timeout, f"job {job_id} to finish")
        return result

    def wait_idle(self) -> None:
        """Until every executor is up and idle (start-up work done)."""

        def idle() -> bool:
            with contextlib.suppress(OSError, ValueError):
                comps = self.status().get("components", [])
                executors = [c for c in comps if c.get("kind") == "job-executor"]
                return bool(executors) and all(c.get("state") == "idle" for c in executors)
            return False

        wait_for(idle, 60, "executors idle")

    def close(self) -> None:
        """Stop the server (gracefully, else SIGKILL), sweep this home's processes, delete it."""
        with contextlib.suppress(Exception):
            self.sky("api", "stop", "--timeout", "30", check=False, timeout=60)
        pid = self.server_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        sweep_marked([f"{self.key}:"])
        discard_base(detect_capabilities(), f"sky-mini-{self.key}")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Home:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def write_history(home: Home, count: int) -> None:
    """Benchmark fixture: ``count`` finished jobs written straight into the store."""
    paths = home.paths
    ensure_dirs(paths)
    store = Store(paths)
    now = time.time()
    for job_id in range(1, count + 1):
        finished = now - (count - job_id) * 2.0
        record = JobRecord(
            id=job_id,
            task={"run": "true", "workdir": "/", "envs": {}, "resources": {"cpus": 1.0}},
            name="true",
            log_path=paths.job_log(job_id),
            submitted_at=finished - 1.0,
            status=JobStatus.SUCCEEDED,
            exit_code=0,
            started_at=finished - 0.5,
            finished_at=finished,
            env={"PATH": os.environ.get("PATH", "")},
        )
        store.save_job(record, durable=False)
    atomic_write_bytes(paths.next_id, f"{count + 1}\n".encode())
    store.write_active([], count)  # as a server leaves it: nothing unfinished


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summarize(values: list[float]) -> tuple[float, float]:
    """(median, p90) in milliseconds."""
    return statistics.median(values) * 1000, percentile(values, 0.9) * 1000


def run_timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "inotify_max_user_instances": read_int("/proc/sys/fs/inotify/max_user_instances"),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
    }


def read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError), open(path) as handle:
        return int(handle.read().strip())
    return None


def render(info: dict[str, Any], rows: list[Row]) -> str:
    lines = [
        "sky-mini benchmark  "
        + "  ".join(f"{k}={v}" for k, v in info.items() if k != "command")
        + f"\ncommand: {info['command']}",
        "",
    ]
    width = max(len(r.metric) for r in rows)
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append(f"[{section}]")
        value = f"{row.value} {row.unit}".strip()
        lines.append(f"  {row.metric:<{width}}  {value:>18}  {row.note}".rstrip())
    return "\n".join(lines)
