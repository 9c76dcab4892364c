"""sky-mini benchmark: submission, following, draining, footprint, start-up and clean-up.

Run it as ``./scripts/bench`` (creates .venv on first use) or ``.venv/bin/python
scripts/bench.py``; ``--quick`` for a shorter run, ``--json`` for machine-readable output.
Every measurement uses its own temporary ``SKY_MINI_HOME``, starts its own server and stops
it at the end; processes are cleaned up by the home's ``SKY_MINI_MARKER`` only.

Speed targets live here, not in the tests (STYLE 20). Numbers are wall-clock on whatever
machine runs this: compare runs on the same machine, and see docs/PERFORMANCE.md.

Benchmark fixture: histories of 100 / 10,000 finished jobs are written directly in the store
format (``sky_mini.state.Store`` + ``sky_mini.models.JobRecord``, plus ``next_id`` and the
active index as a server leaves them), because submitting 10,000 jobs through the CLI would
take a quarter of an hour and measure nothing new. The drain measurement likewise creates
its 100 PENDING records through ``Store.create_job`` (the CLI's own code path) so that all of
them are queued before the server is woken.
"""

from __future__ import annotations

import argparse
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import psutil  # noqa: E402

from sky_mini.cgroups import detect_capabilities, discard_base  # noqa: E402
from sky_mini.models import JobRecord, JobStatus  # noqa: E402
from sky_mini.paths import Paths, ensure_dirs  # noqa: E402
from sky_mini.procs import find_marked_processes, is_same_process, sweep_marked  # noqa: E402
from sky_mini.state import Store, atomic_write_bytes  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_http  # noqa: E402
import bench_peers  # noqa: E402

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


# -- homes and servers ------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKY_MINI_")}
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


# -- 1. launch --async latency ------------------------------------------------------------------


def bench_launch_latency(b: Bench) -> None:
    """Cron's call, beside the interpreter and ``import click`` floors.

    All four are sampled in turn within one loop, so machine noise hits them alike.
    """
    section = "1 launch --async"
    env = base_env()
    floors = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import click' (floor)": [sys.executable, "-c", "import click"],
    }
    launch = ("jobs", "launch", "--async", "--", "true")
    samples: dict[str, list[float]] = {}
    with Home("launch") as empty, Home("launch-history") as full:
        write_history(full, HISTORY_JOBS)
        homes = {
            "sky-mini jobs launch --async -- true, 0 jobs in history": empty,
            f"sky-mini jobs launch --async -- true, {HISTORY_JOBS:,} jobs in history": full,
        }
        for home in homes.values():
            home.start()
            for _ in range(3):  # warm-up: page cache, bytecode
                home.sky(*launch)
        for argv in floors.values():
            run_timed(argv, env)
        for _ in range(b.reps):
            for label, argv in floors.items():
                samples.setdefault(label, []).append(run_timed(argv, env))
            for label, home in homes.items():
                samples.setdefault(label, []).append(home.timed(*launch))
    for label, values in samples.items():
        median, p90 = summarize(values)
        b.add(section, f"{label}: median / p90", f"{median:.1f} / {p90:.1f}", "ms")


# -- 2. concurrent submissions --------------------------------------------------------------


def bench_concurrent(b: Bench) -> None:
    section = "2 concurrent --async"
    cases = (
        [(30, False), (100, False)]
        if b.quick
        else [(30, False), (30, True), (100, False), (100, True)]
    )
    for count, warm in cases:
        with Home("burst") as home:
            if warm:
                home.start()
            argv = [*SKY, "jobs", "launch", "--async", "--", "true"]
            start = time.perf_counter()
            procs = [
                subprocess.Popen(argv, env=home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(count)
            ]
            outs = [p.communicate(timeout=600) for p in procs]
            wall = time.perf_counter() - start
            printed = [int(out) for out, _ in outs if out.strip().isdigit()]
            failed = sum(1 for p in procs if p.returncode != 0)
            recorded = {int(n[:-5]) for n in os.listdir(home.paths.jobs_dir) if n[:1].isdigit()}
            expected = set(range(1, count + 1))
            lost = len(expected - (set(printed) & recorded))
            duplicates = len(printed) - len(set(printed))
            # Recorded is not enough: every job must also run (a start-up race once left
            # some PENDING for ever).
            wait = [*SKY, "jobs", "wait", "--timeout", "120", *map(str, sorted(recorded))]
            all_ran = subprocess.run(wait, env=home.env, capture_output=True).returncode == 0
            with open(home.paths.server_log) as handle:
                servers = handle.read().count(" serving (pid ")
            label = f"{count} at once, {'server running' if warm else 'no server (auto-start)'}"
            b.add(section, f"{label}: wall", wall * 1000, "ms")
            b.add(
                section,
                f"{label}: lost / duplicate / failed",
                f"{lost} / {duplicates} / {failed}",
                note=(
                    f"IDs 1..{count}: {sorted(printed) == sorted(expected)}; servers: {servers}; "
                    f"all SUCCEEDED: {all_ran}"
                ),
            )


# -- 3. drain ------------------------------------------------------------------------------------


def bench_drain(b: Bench) -> None:
    section = "3 drain"
    count = 100
    executors = 2
    env = base_env()
    argv = [SHELL, "-c", "true"]
    start = time.perf_counter()
    for _ in range(count):
        subprocess.run(argv, env=env, check=True)
    plain = (time.perf_counter() - start) / count
    with Home("drain") as home:
        home.start("--executors", str(executors))
        home.wait_idle()
        from sky_mini.client import wake_server
        from sky_mini.spec import task_from_command

        task = task_from_command(["true"], name=None, cwd=home.dir).to_json()
        store = Store(home.paths)
        job_env = dict(home.env)
        start = time.perf_counter()
        first = time.time()
        for _ in range(count):

            def build(job_id: int) -> JobRecord:
                return JobRecord(
                    id=job_id,
                    task=task,
                    name="true",
                    log_path=home.paths.job_log(job_id),
                    submitted_at=first,
                    env=job_env,
                )

            store.create_job(build)
        wake_server(home.paths)
        lowest = 1
        terminal = {s.value for s in JobStatus if s.is_terminal}

        def all_done() -> bool:
            nonlocal lowest
            while lowest <= count:
                try:
                    status = home.job(lowest)["status"]
                except (OSError, ValueError):
                    return False
                if status not in terminal:
                    return False
                lowest += 1
            return True

        wait_for(all_done, 600, "the queue to drain", poll=0.005)
        wall = time.perf_counter() - start
        succeeded = sum(1 for j in range(1, count + 1) if home.job(j)["status"] == "SUCCEEDED")
    per_job = wall * executors / count
    b.add(
        section,
        f"{count} x 'true' with {executors} executors: wall",
        wall * 1000,
        "ms",
        f"{count / wall:.1f} jobs/s; {succeeded} SUCCEEDED",
    )
    b.add(section, "per job per executor (wall x executors / jobs)", per_job * 1000, "ms")
    b.add(section, f"plain fork+exec loop ({os.path.basename(SHELL)} -c true)", plain * 1000, "ms")
    b.add(section, "sky-mini overhead per job", (per_job - plain) * 1000, "ms")
    bench_peers.drain_rows(b, section, wall, plain, count, executors)


# -- 4. submit -> started ------------------------------------------------------------------------


def measure_start_latency(home: Home, samples: int) -> tuple[list[float], list[float]]:
    """(CLI invoked -> job process running, record written -> job process running), seconds."""
    from_cli: list[float] = []
    from_record: list[float] = []
    for _ in range(samples):
        invoked = time.time()
        job_id = int(home.sky("jobs", "launch", "--async", "--", "date", "+%s.%N").strip())
        record = home.wait_terminal(job_id)
        with open(record["log_path"]) as handle:
            started = float(handle.read().strip())
        from_cli.append(started - invoked)
        from_record.append(started - record["submitted_at"])
    return from_cli, from_record


def bench_start_latency(b: Bench) -> None:
    section = "4 submit -> started"
    with Home("latency") as home:
        home.start("--executors", "2")
        home.wait_idle()
        home.sky("jobs", "launch", "--async", "--", "true")  # warm-up
        from_cli, from_record = measure_start_latency(home, b.reps)
    median, p90 = summarize(from_cli)
    b.add(
        section,
        "CLI invoked -> job running: median / p90",
        f"{median:.1f} / {p90:.1f}",
        "ms",
        "includes the CLI's own start-up",
    )
    median, p90 = summarize(from_record)
    b.add(
        section,
        "record written -> job running: median / p90",
        f"{median:.1f} / {p90:.1f}",
        "ms",
        "the server's part: wake-up, dispatch, fork, exec",
    )
    bench_peers.latency_rows(b, section, from_record, b.reps)


# -- 5. idle footprint -------------------------------------------------------------------------


def footprint(home: Home) -> tuple[int, int, int]:
    """(processes, total RSS, total USS) of the server and all its descendants."""
    pid = home.server_pid()
    assert pid is not None
    server = psutil.Process(pid)
    procs = [server, *server.children(recursive=True)]
    rss = uss = 0
    for proc in procs:
        info = proc.memory_full_info()
        rss += info.rss
        uss += info.uss
    return len(procs), rss, uss


def bench_footprint(b: Bench) -> None:
    section = "5 idle footprint"
    for label, extra in (
        ("default", {}),
        ("SKY_MINI_CPUS=1 SKY_MINI_MEMORY=2G", {"SKY_MINI_CPUS": "1", "SKY_MINI_MEMORY": "2G"}),
    ):
        with Home("footprint", extra) as home:
            home.start()
            home.wait_idle()
            time.sleep(1.0)  # a benchmark, not a test: let start-up garbage settle
            count, rss, uss = footprint(home)
            executors = len(home.executor_pids())
        b.add(
            section,
            f"{label}: RSS / USS",
            f"{rss / 2**20:.1f} / {uss / 2**20:.1f}",
            "MiB",
            f"server + {executors} executor(s) = {count} processes",
        )


# -- 6. start, status, queue -----------------------------------------------------------------


def bench_start_status_queue(b: Bench) -> None:
    section = "6 start/status/queue"
    starts = []
    for _ in range(3 if b.quick else 5):
        with Home("start") as home:
            starts.append(home.timed("api", "start", "--idle-minutes", "off"))
    b.add(
        section,
        "api start -> healthy (empty home): median",
        statistics.median(starts) * 1000,
        "ms",
        f"{len(starts)} starts",
    )
    for history in (100, HISTORY_JOBS):
        with Home("queue") as home:
            write_history(home, history)
            elapsed = home.timed("api", "start", "--idle-minutes", "off")
            b.add(
                section, f"api start -> healthy, {history:,} jobs in history", elapsed * 1000, "ms"
            )
            if history == HISTORY_JOBS:
                home.sky("api", "status")
                median, p90 = summarize([home.timed("api", "status") for _ in range(b.reps)])
                b.add(section, "api status: median / p90", f"{median:.1f} / {p90:.1f}", "ms")
            for args in (("jobs", "queue"), ("jobs", "queue", "--all", "--limit", "50")):
                home.sky(*args)
                median, p90 = summarize([home.timed(*args) for _ in range(b.reps)])
                b.add(
                    section,
                    f"{' '.join(args)}, {history:,} jobs: median / p90",
                    f"{median:.1f} / {p90:.1f}",
                    "ms",
                )


# -- 7. kill -9 ------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill9_once(home: Home) -> tuple[float, int]:
    """SIGKILL a busy server; (seconds until its last descendant is gone, processes watched)."""
    home.start("--executors", "2")
    home.wait_idle()
    # A job with a child, and a grandchild that escaped with setsid.
    script = "setsid sleep 1000 & sleep 1000"
    home.sky("jobs", "launch", "--async", "--", "sh", "-c", script)
    prefix = [f"{home.key}:"]
    wait_for(lambda: len(find_marked_processes(prefix)) >= 3, 60, "the job's process tree")
    executors = home.executor_pids()
    server = home.server_pid()
    assert server is not None
    watched = len(find_marked_processes(prefix)) + len(executors)

    def gone() -> bool:
        return not find_marked_processes(prefix) and not any(alive(p) for p in executors)

    start = time.perf_counter()
    os.kill(server, signal.SIGKILL)
    wait_for(gone, 30, "every descendant to die", poll=0.001)
    return time.perf_counter() - start, watched


def bench_kill9(b: Bench) -> None:
    section = "7 kill -9 server"
    results = []
    watched = 0
    for _ in range(1 if b.quick else 3):
        with Home("kill9") as home:
            elapsed, watched = kill9_once(home)
            results.append(elapsed)
    b.add(
        section,
        "SIGKILL server -> last descendant gone: max",
        max(results) * 1000,
        "ms",
        f"{len(results)} run(s); {watched} processes watched (job tree + executors)",
    )


# -- 8. latency under 128 followers -----------------------------------------------------------


def inotify_fds(pid: int) -> int:
    count = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:inotify":
                    count += 1
    return count


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def bench_followers(b: Bench) -> None:
    section = f"8 with {FOLLOWERS} followers"
    with Home("follow") as home:
        home.start("--executors", "2")
        home.wait_idle()
        chatty = "while :; do echo tick; sleep 0.05; done"  # 20 lines/s to every follower
        job_id = home.sky("jobs", "launch", "--async", "--", "sh", "-c", chatty).strip()
        outputs = [os.path.join(home.dir, f"follower-{i}.out") for i in range(FOLLOWERS)]
        followers: list[subprocess.Popen[bytes]] = []
        try:
            for path in outputs:
                with open(path, "wb") as out:
                    followers.append(
                        subprocess.Popen(
                            [*SKY, "jobs", "logs", job_id],
                            env=home.env,
                            stdout=out,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            wait_for(lambda: all(os.path.getsize(p) > 0 for p in outputs), 300, "followers")
            on_inotify = sum(1 for f in followers if inotify_fds(f.pid))
            watched = [psutil.Process(f.pid) for f in followers]
            server_pid = home.server_pid()
            assert server_pid is not None
            server = [psutil.Process(server_pid)]
            cpu_followers = cpu_seconds(watched)
            cpu_server = cpu_seconds(server)
            start = time.perf_counter()
            from_cli, from_record = measure_start_latency(home, b.reps)
            window = time.perf_counter() - start
            cpu_followers = cpu_seconds(watched) - cpu_followers
            cpu_server = cpu_seconds(server) - cpu_server
            still = sum(1 for f in followers if f.poll() is None)
        finally:
            for proc in followers:
                if proc.poll() is None:
                    proc.kill()
            for proc in followers:
                proc.wait()
    median, p90 = summarize(from_cli)
    b.add(section, "CLI invoked -> job running: median / p90", f"{median:.1f} / {p90:.1f}", "ms")
    median, p90 = summarize(from_record)
    b.add(section, "record written -> job running: median / p90", f"{median:.1f} / {p90:.1f}", "ms")
    b.add(
        section,
        "followers on inotify / on the poll fallback",
        f"{on_inotify} / {FOLLOWERS - on_inotify}",
        "",
        "fs.inotify.max_user_instances caps inotify users per uid",
    )
    b.add(
        section,
        f"CPU of all {FOLLOWERS} followers during the window",
        100 * cpu_followers / window,
        "% of a core",
        f"{window:.1f}s window, 20 lines/s each; {still} still attached",
    )
    b.add(
        section,
        "server CPU during the window",
        100 * cpu_server / window,
        "% of a core",
        "followers never contact the server",
    )


# -- report ------------------------------------------------------------------------------------


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


def bench_watchdog(b: Bench) -> None:
    """Peak of one big allocation under the watchdog, cgroups read-only (bench_watchdog.py)."""
    from bench_watchdog import run

    run(b)


SECTIONS: dict[str, Callable[[Bench], None]] = {
    "launch": bench_launch_latency,
    "cron": lambda b: bench_peers.bench_cron(b, Home, SKY, base_env),
    "burst": lambda b: bench_peers.bench_burst(b, Home, SKY, base_env),
    "concurrent": bench_concurrent,
    "drain": bench_drain,
    "latency": bench_start_latency,
    "footprint": bench_footprint,
    "start": bench_start_status_queue,
    "kill9": bench_kill9,
    "followers": bench_followers,
    "http": lambda b: bench_http.run(b, Home, footprint),
    "watchdog": bench_watchdog,
    "lb": lambda b: bench_peers.bench_lb(b, Home),
    "failover": lambda b: bench_peers.bench_failover(b, Home),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, fewer cases")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SECTIONS),
        help="run only these measurements (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print rows as they come")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("scripts/bench measures a Linux supervisor; run it on Linux", file=sys.stderr)
        return 2
    bench = Bench(quick=args.quick, verbose=args.verbose)
    info = machine()
    for name, run in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        print(f"==> {name}", file=sys.stderr)
        run(bench)
    if args.json:
        print(json.dumps({"machine": info, "results": [r.__dict__ for r in bench.rows]}, indent=1))
    else:
        print(render(info, bench.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
