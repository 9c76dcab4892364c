"""Floors and peers for the performance targets of issue 16 (``scripts/bench``).

Every target is a ratio to a floor or a peer measured in the same run, so it holds on a
noisy machine. The harness passes in its ``Home`` class and helpers:

- ``cron``: ``jobs launch --async -- true`` and a one-task YAML against
  ``python -c 'import click'``, interleaved (target ≤ 1.3×);
- ``burst``: 30 ``--async`` at once against 30 ``import click`` at once (≤ 1.6×);
- drain and latency rows (called from the drain and latency sections): task-spooler (``tsp``,
  Debian's ``task-spooler``) draining the same 100 × ``true`` with 2 slots, and its
  enqueue → running latency;
- ``lb``: the services load balancer in front of 2 nginx replicas against nginx direct,
  with ``wrk -c16`` (keep-alive, ≥ 0.4×) and ``ab -c16`` (new connection each, ≥ 0.5×);
- ``failover``: ``wrk -c20`` through the load balancer to 2 Python replicas while one is
  SIGKILLed; target 0 failed requests.

Missing tools are installed from Debian with ``apt-get`` when running as root; otherwise
their rows say what to install. Everything listens on 127.0.0.1 only, and every run is
bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

TOOLS = {"tsp": "task-spooler", "nginx": "nginx-light", "wrk": "wrk", "ab": "apache2-utils"}
CRON_TARGET = 1.3
BURST_TARGET = 1.6
BURST = 30
DRAIN_TARGET_MS = 5.0
LATENCY_TARGET_MS = 10.0
LB_KEEPALIVE_TARGET = 0.4
LB_NEWCONN_TARGET = 0.5
LB_ADDED_P50_TARGET_MS = 0.3

_missing_reported: set[str] = set()


def ensure_tool(name: str) -> str | None:
    """Path of ``name``, installing its Debian package when root and missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found:
        return found
    package = TOOLS[name]
    if os.geteuid() == 0 and shutil.which("apt-get") and package not in _missing_reported:
        _missing_reported.add(package)
        print(f"==> apt-get install {package} (for the {name} peer)", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        # A package's post-install may start a system daemon (nginx on :80): stop it.
        if name == "nginx" and os.path.exists("/run/nginx.pid"):
            subprocess.run(["nginx", "-s", "stop"], capture_output=True, timeout=30)
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def ratio(value: float, floor: float) -> str:
    return f"{value / floor:.2f}×" if floor > 0 else "n/a"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def at_most(share: float, target: float) -> str:
    return f"target ≤ {target}×: {verdict(share <= target)}"


def at_least(share: float, target: float) -> str:
    return f"target ≥ {target}×: {verdict(share >= target)}"


# -- cron path -------------------------------------------------------------------------------


def run_timed(argv: list[str], env: dict[str, str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - start


ONE_TASK_YAML = 'name: nightly\nrun: "true"\nresources:\n  cpus: 1\n'


def bench_cron(
    b: Any, home_class: Any, sky: list[str], base_env: Callable[[], dict[str, str]]
) -> None:
    """``launch --async`` (command and one-task YAML) against ``import click``, interleaved.

    The YAML row is measured twice: the same file every time (as cron runs it: its parse
    comes from the content-keyed cache in the home) and a file whose bytes change before
    every call (a cold parse, with PyYAML imported, plus writing the cache entry)."""
    section = "cron path"
    env = base_env()
    floor_argv = [sys.executable, "-c", "import click"]
    samples: dict[str, list[float]] = {"floor": [], "cmd": [], "yaml": [], "changed": []}
    with home_class("cron") as home:
        home.start()
        task = os.path.join(home.dir, "task.yaml")
        with open(task, "w") as handle:
            handle.write(ONE_TASK_YAML)
        changing = os.path.join(home.dir, "changing.yaml")
        cmd = [*sky, "jobs", "launch", "--async", "--", "true"]
        yaml = [*sky, "jobs", "launch", "--async", task]
        changed = [*sky, "jobs", "launch", "--async", changing]
        for index in range(3 + b.reps):
            with open(changing, "w") as handle:
                handle.write(f"{ONE_TASK_YAML}# edit {index}\n")  # new bytes: a cold parse
            times = {
                "floor": run_timed(floor_argv, env),
                "cmd": run_timed(cmd, home.env),
                "yaml": run_timed(yaml, home.env),
                "changed": run_timed(changed, home.env),
            }
            if index >= 3:  # the first rounds warm the page cache and the bytecode
                for key, value in times.items():
                    samples[key].append(value)
    floor = statistics.median(samples["floor"]) * 1000
    b.add(section, "python -c 'import click' (floor): median", floor, "ms", f"{b.reps} samples")
    for key, label in (
        ("cmd", "jobs launch --async -- true"),
        ("yaml", "jobs launch --async TASK.yaml (same file)"),
        ("changed", "... TASK.yaml changed before each call"),
    ):
        median = statistics.median(samples[key]) * 1000
        share = median / floor
        b.add(
            section,
            f"{label}: median",
            median,
            "ms",
            f"{ratio(median, floor)} the floor; {at_most(share, CRON_TARGET)}",
        )


def bench_burst(
    b: Any, home_class: Any, sky: list[str], base_env: Callable[[], dict[str, str]]
) -> None:
    """30 ``--async`` at once (server running) against 30 ``import click`` at once."""
    section = "burst"
    env = base_env()

    def burst(argv: list[str], run_env: dict[str, str]) -> float:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                argv, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for _ in range(BURST)
        ]
        codes = [p.wait(timeout=600) for p in procs]
        if any(codes):
            raise RuntimeError(f"{argv[:3]}: {sum(1 for c in codes if c)} of {BURST} failed")
        return time.perf_counter() - start

    floors: list[float] = []
    launches: list[float] = []
    rounds = 2 if b.quick else 4
    with home_class("burst-peer") as home:
        home.start()
        home.wait_idle()
        launch = [*sky, "jobs", "launch", "--async", "--", "true"]
        for _ in range(rounds):
            floors.append(burst([sys.executable, "-c", "import click"], env))
            launches.append(burst(launch, home.env))
    floor = statistics.median(floors) * 1000
    wall = statistics.median(launches) * 1000
    b.add(
        section,
        f"{BURST} x python -c 'import click' at once (floor): wall",
        floor,
        "ms",
        f"median of {rounds}",
    )
    b.add(
        section,
        f"{BURST} x jobs launch --async at once, server running: wall",
        wall,
        "ms",
        f"{ratio(wall, floor)} the floor; {at_most(wall / floor, BURST_TARGET)}",
    )


# -- drain and latency against task-spooler ------------------------------------------------------


class Spooler:
    """A private task-spooler server (its own socket and output directory)."""

    def __init__(self, slots: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="sky-bench-tsp-")
        self.env = dict(os.environ, TS_SOCKET=os.path.join(self.dir, "socket"), TMPDIR=self.dir)
        self.env["TS_SLOTS"] = str(slots)
        self.env.pop("TS_ONFINISH", None)
        self.tsp = ensure_tool("tsp")

    def run(self, *args: str) -> str:
        assert self.tsp is not None
        proc = subprocess.run(
            [self.tsp, *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        return proc.stdout

    def close(self) -> None:
        if self.tsp is not None:
            with contextlib.suppress(Exception):
                self.run("-K")  # stops this socket's server only
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Spooler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tsp_drain(count: int, slots: int) -> float | None:
    """Seconds for task-spooler to run ``count`` × ``true`` with ``slots`` slots."""
    with Spooler(slots) as spool:
        if spool.tsp is None:
            return None
        spool.run("-S", str(slots))
        start = time.perf_counter()
        for _ in range(count):
            spool.run("-n", "true")
        spool.run("-w", str(count - 1))  # a fresh server numbers jobs from 0 (-n prints none)
        return time.perf_counter() - start


def drain_rows(b: Any, section: str, wall: float, plain: float, count: int, executors: int) -> None:
    """Target and peer for bench.py's drain section (called with its own figures)."""
    per_job = wall * executors / count
    overhead_ms = (per_job - plain) * 1000
    b.add(
        section,
        "target: overhead per job ≤ 5 ms",
        overhead_ms,
        "ms",
        verdict(overhead_ms <= DRAIN_TARGET_MS),
    )
    peer = tsp_drain(count, executors)
    if peer is None:
        b.add(section, "task-spooler peer", "n/a", note="install task-spooler (tsp)")
        return
    b.add(
        section,
        f"task-spooler (tsp -S {executors}): {count} x 'true': wall",
        peer * 1000,
        "ms",
        f"{count / peer:.1f} jobs/s; sky-mini {ratio(wall, peer)} of it (no limits, no records)",
    )


def tsp_latency(samples: int) -> list[float]:
    """Seconds from ``tsp CMD`` invoked to the command running."""
    result: list[float] = []
    with Spooler(2) as spool:
        if spool.tsp is None:
            return result
        for job in range(samples):
            out = os.path.join(spool.dir, f"t{job}")
            invoked = time.time()
            spool.run("-n", "sh", "-c", f"date +%s.%N > {out}")
            spool.run("-w", str(job))
            with open(out) as handle:
                result.append(float(handle.read().strip()) - invoked)
    return result


def latency_rows(b: Any, section: str, from_record: list[float], reps: int) -> None:
    """Target and peer for bench.py's submit → started section."""
    p50 = statistics.median(from_record) * 1000
    b.add(
        section,
        f"target: record written -> running p50 ≤ {LATENCY_TARGET_MS:g} ms",
        p50,
        "ms",
        verdict(p50 <= LATENCY_TARGET_MS),
    )
    peer = tsp_latency(reps)
    if peer:
        b.add(
            section,
            "task-spooler: tsp invoked -> job running: median",
            statistics.median(peer) * 1000,
            "ms",
            "peer (a C client; includes its start-up)",
        )


# -- load balancer -----------------------------------------------------------------------------

NGINX_CONF = """\
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx-@PORT@.pid;
error_log {dir}/nginx-@PORT@.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body-@PORT@;
    proxy_temp_path {dir}/proxy-@PORT@;
    fastcgi_temp_path {dir}/fcgi-@PORT@;
    uwsgi_temp_path {dir}/uwsgi-@PORT@;
    scgi_temp_path {dir}/scgi-@PORT@;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

NGINX_PROXY_CONF = """\
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx-proxy.pid;
error_log {dir}/nginx-proxy.err warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body-proxy;
    proxy_temp_path {dir}/proxy-proxy;
    fastcgi_temp_path {dir}/fcgi-proxy;
    uwsgi_temp_path {dir}/uwsgi-proxy;
    scgi_temp_path {dir}/scgi-proxy;
    keepalive_requests 1000000;
    upstream replicas {{
        server 127.0.0.1:{first};
        server 127.0.0.1:{second};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

PY_REPLICA = """\
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def wait_ready(home: Any, name: str, replicas: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = json.loads(home.sky("services", "status", "--json"))
        for row in data.get("services", []):
            if row.get("name") == name and row.get("ready_replicas") == replicas:
                return dict(row)
        if time.monotonic() > deadline:
            raise RuntimeError(f"service {name} not READY within {timeout}s: {data}")
        time.sleep(0.1)


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    tool = ensure_tool("wrk")
    assert tool is not None
    argv = [tool, "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    result = {"rps": 0.0, "p50_ms": 0.0, "requests": 0.0, "errors": 0.0, "non2xx": 0.0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result["rps"] = float(m.group(1))
    if m := re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out):
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        result["p50_ms"] = float(m.group(1)) * scale
    if m := re.search(r"(\d+) requests in", out):
        result["requests"] = float(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        result["errors"] = float(sum(int(g) for g in m.groups()))
        result["error_kinds"] = m.group(0)  # type: ignore[assignment]
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        result["non2xx"] = float(m.group(1))
    result["raw"] = out  # type: ignore[assignment]
    return result


def ab(url: str, connections: int, requests: int) -> dict[str, float]:
    tool = ensure_tool("ab")
    assert tool is not None
    argv = [tool, "-q", "-c", str(connections), "-n", str(requests), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
    result = {"rps": 0.0, "failed": 0.0}
    if m := re.search(r"Requests per second:\s+([\d.]+)", out):
        result["rps"] = float(m.group(1))
    if m := re.search(r"Failed requests:\s+(\d+)", out):
        result["failed"] = float(m.group(1))
    return result


def bench_lb(b: Any, home_class: Any) -> None:
    """The load balancer in front of 2 nginx replicas, against one nginx direct."""
    section = "lb"
    nginx = ensure_tool("nginx")
    if nginx is None or ensure_tool("wrk") is None or ensure_tool("ab") is None:
        b.add(section, "load balancer rows", "n/a", note="install nginx-light, wrk, apache2-utils")
        return
    seconds = 3 if b.quick else 5
    requests = 5000 if b.quick else 20000
    with home_class("lb") as home:
        conf = os.path.join(home.dir, "nginx.conf.in")
        with open(conf, "w") as handle:
            handle.write(NGINX_CONF.format(dir=home.dir))
        spec = os.path.join(home.dir, "web.yaml")
        run = (
            f"sed s/@PORT@/$PORT/g {conf} > {home.dir}/nginx-$PORT.conf && "
            f"exec {nginx} -e {home.dir}/nginx-$PORT.err -c {home.dir}/nginx-$PORT.conf"
        )
        with open(spec, "w") as handle:
            json.dump(
                {"name": "web", "run": run, "replicas": 2, "readiness_probe": {"path": "/"}}, handle
            )
        home.start()
        home.sky("services", "up", spec)
        row = wait_ready(home, "web", 2)
        lb = f"http://127.0.0.1:{row['port']}/"
        direct = f"http://127.0.0.1:{row['replicas'][0]['port']}/"
        wrk(lb, 16, 1)  # warm-up
        d = wrk(direct, 16, seconds)
        controller = controller_pid(home)
        before = cpu_seconds(controller)
        v = wrk(lb, 16, seconds)
        spent = cpu_seconds(controller) - before
        b.add(
            section,
            "wrk -c16 keep-alive, nginx direct: req/s",
            d["rps"],
            "",
            f"p50 {d['p50_ms']:.3f} ms",
        )
        share = v["rps"] / d["rps"] if d["rps"] else 0.0
        b.add(
            section,
            "wrk -c16 keep-alive, through the LB (2 replicas): req/s",
            v["rps"],
            "",
            f"{share:.2f}× direct; {at_least(share, LB_KEEPALIVE_TARGET)}; "
            f"errors {v['errors'] + v['non2xx']:.0f}",
        )
        if v["requests"] and controller is not None:
            b.add(
                section,
                "LB CPU per keep-alive request (controller, user + system)",
                f"{spent / v['requests'] * 1e6:.1f}",
                "µs",
                "steadier than req/s on a shared machine",
            )
        added = v["p50_ms"] - d["p50_ms"]
        b.add(
            section,
            "p50 latency added by the LB",
            f"{added:.3f}",
            "ms",
            f"{v['p50_ms']:.3f} vs {d['p50_ms']:.3f}; target ≤ {LB_ADDED_P50_TARGET_MS}: "
            f"{verdict(added <= LB_ADDED_P50_TARGET_MS)}",
        )
        keepalive_share = share
        d = ab(direct, 16, requests)
        v = ab(lb, 16, requests)
        b.add(
            section,
            f"ab -c16 -n{requests} new connections, direct: req/s",
            d["rps"],
            "",
            f"failed {d['failed']:.0f}",
        )
        share = v["rps"] / d["rps"] if d["rps"] else 0.0
        b.add(
            section,
            f"ab -c16 -n{requests} new connections, through the LB: req/s",
            v["rps"],
            "",
            f"{share:.2f}× direct; {at_least(share, LB_NEWCONN_TARGET)}; failed {v['failed']:.0f}",
        )
        shares = (keepalive_share, share)
        nginx_proxy_rows(b, section, nginx, home.dir, row, seconds, requests, d["rps"], shares)
        home.sky("services", "down", "web")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        time.sleep(0.05)
        return False


def nginx_proxy_rows(
    b: Any,
    section: str,
    nginx: str,
    workdir: str,
    row: dict[str, Any],
    seconds: float,
    requests: int,
    direct_ab_rps: float,
    lb_shares: tuple[float, float],
) -> None:
    """A peer for the LB rows: nginx itself as the reverse proxy (one worker, upstream
    keep-alive) in front of the same 2 replicas, on the same cores. What a proxy written
    in C reaches here bounds what any proxy can."""
    first, second = (int(r["port"]) for r in row["replicas"][:2])
    port = free_port()
    conf = os.path.join(workdir, "nginx-proxy.conf")
    with open(conf, "w") as handle:
        handle.write(NGINX_PROXY_CONF.format(dir=workdir, first=first, second=second, port=port))
    err = os.path.join(workdir, "nginx-proxy.err")
    proxy = subprocess.Popen([nginx, "-e", err, "-c", conf], stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while not answers(url):
            if proxy.poll() is not None or time.monotonic() > deadline:
                b.add(section, "nginx as the proxy (peer)", "n/a", note=f"did not start: {err}")
                return
        direct = wrk(f"http://127.0.0.1:{first}/", 16, seconds)
        through = wrk(url, 16, seconds)
        share = through["rps"] / direct["rps"] if direct["rps"] else 0.0
        b.add(
            section,
            "peer: wrk -c16 keep-alive through nginx as the proxy: req/s",
            through["rps"],
            "",
            f"{share:.2f}× direct ({direct['rps']:.0f}); p50 added "
            f"{through['p50_ms'] - direct['p50_ms']:.3f} ms; the LB's share is "
            f"{lb_shares[0] / share if share else 0.0:.2f}× of it",
        )
        via = ab(url, 16, requests)
        share = via["rps"] / direct_ab_rps if direct_ab_rps else 0.0
        b.add(
            section,
            f"peer: ab -c16 -n{requests} new connections through nginx as the proxy: req/s",
            via["rps"],
            "",
            f"{share:.2f}× direct; the LB's share is {lb_shares[1] / share if share else 0.0:.2f}× "
            f"of it; failed {via['failed']:.0f}",
        )
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def controller_pid(home: Any) -> int | None:
    """The services-controller's PID, from ``api status``'s components."""
    for component in home.status().get("components", []):
        if component.get("kind") == "services-controller" and component.get("pid"):
            return int(component["pid"])
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU a process has used so far (0 when it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def confirmed_pid(replica: dict[str, Any]) -> int | None:
    """The replica's PID if it is still the process the controller recorded."""
    import psutil

    pid, created = replica.get("pid"), replica.get("create_time")
    if not pid or created is None:
        return None
    with contextlib.suppress(psutil.Error):
        if abs(psutil.Process(int(pid)).create_time() - float(created)) < 0.05:
            return int(pid)
    return None


def bench_failover(b: Any, home_class: Any) -> None:
    """``wrk -c20`` through the LB while one of 2 Python replicas is SIGKILLed."""
    section = "failover"
    if ensure_tool("wrk") is None:
        b.add(section, "failover row", "n/a", note="install wrk")
        return
    seconds = 4 if b.quick else 6
    with home_class("failover") as home:
        script = os.path.join(home.dir, "replica.py")
        with open(script, "w") as handle:
            handle.write(PY_REPLICA)
        spec = os.path.join(home.dir, "py.yaml")
        with open(spec, "w") as handle:
            json.dump(
                {
                    "name": "py",
                    "run": f"exec {sys.executable} {script} $PORT",
                    "replicas": 2,
                    "readiness_probe": {"path": "/"},
                },
                handle,
            )
        home.start()
        home.sky("services", "up", spec)
        row = wait_ready(home, "py", 2)
        url = f"http://127.0.0.1:{row['port']}/"
        victim = confirmed_pid(row["replicas"][0])
        if victim is None:
            raise RuntimeError(f"replica 0 of py has no confirmable PID: {row['replicas'][0]}")
        result: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            import threading

            thread = threading.Thread(target=lambda: result.update(wrk(url, 20, seconds)))
            thread.start()
            stack.callback(thread.join)
            time.sleep(seconds / 3)  # a benchmark, not a test: kill it under load
            os.kill(victim, signal.SIGKILL)
        if b.verbose:
            print(result.get("raw", ""), file=sys.stderr)
        failed = result.get("errors", 0) + result.get("non2xx", 0)
        b.add(
            section,
            "wrk -c20 through the LB, 1 of 2 Python replicas SIGKILLed: failed",
            f"{failed:.0f} of {result.get('requests', 0):.0f}",
            "",
            f"{result.get('rps', 0):.0f} req/s; target 0: {verdict(failed == 0)}"
            + "".join(f"; {result[k]}" for k in ("error_kinds",) if k in result)
            + (f"; non-2xx {result['non2xx']:.0f}" if result.get("non2xx") else ""),
        )
        home.sky("services", "down", "py")
