"""sky-mini's batch wrapper: what ``sbatch`` runs on the compute node for one job.

A standalone script (standard library only, no sky_mini import): the backend copies it into
``$SKY_MINI_HOME/slurm/`` so a compute node that shares the home can run it with any
Python 3. ``python3 batch_wrapper.py SPEC.json``:

1. writes ``<log>.started.json`` (evidence the job reached a node),
2. runs ``setup`` then ``run`` under bash, each in its own process group (with ``srun`` on
   every node of a multi-node allocation), with ``SKYPILOT_NODE_RANK`` & co. set,
3. forwards TERM/INT/HUP/USR1/USR2 to the job's group; after TERM it waits the grace period
   and SIGKILLs the group (Slurm's ``--signal`` without ``B:`` never reaches a batch shell, so
   sky-mini's cancel signals this process with ``scancel --batch``),
4. enforces ``timeout_seconds`` to the second: SIGTERM, grace, SIGKILL (Slurm's ``--time`` is
   minute-granular and only a backstop),
5. writes ``<log>.exit.json`` atomically (exit code, signal, timeout, phase) and exits with the
   job's code. A record Slurm has forgotten (after ``MinJobAge``) still has its outcome here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
POLL_SECONDS = 0.05


def atomic_write(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def note(line: str) -> None:
    sys.stderr.write(f"sky-mini: {line}\n")
    sys.stderr.flush()


def node_ips() -> list[str]:
    """The allocation's node addresses, rank order (SkyPilot's SKYPILOT_NODE_IPS)."""
    hosts = [socket.gethostname()]
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    scontrol = shutil.which("scontrol")
    if nodelist and scontrol:
        done = subprocess.run(
            [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30
        )
        if done.returncode == 0 and done.stdout.split():
            hosts = done.stdout.split()
    ips = []
    for host in hosts:
        try:
            ips.append(socket.gethostbyname(host))
        except OSError:
            ips.append(host)
    return ips


def peak_memory_bytes() -> int | None:
    """The peak of this step's memory cgroup (the wrapper and the job share it under
    Slurm's task/cgroup): v1 ``memory.max_usage_in_bytes``, v2 ``memory.peak``."""
    try:
        with open("/proc/self/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidates.append(f"/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes")
        elif controllers == "":
            candidates.append(f"/sys/fs/cgroup{path}/memory.peak")
    for candidate in candidates:
        try:
            with open(candidate) as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            continue
    return None


class Wrapper:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.grace = float(spec.get("grace_seconds") or 10.0)
        timeout = spec.get("timeout_seconds")
        self.deadline = time.monotonic() + float(timeout) if timeout else None
        self.child: subprocess.Popen[bytes] | None = None
        self.kill_at: float | None = None
        self.timed_out = False
        self.signal_received: int | None = None
        self.pending: list[int] = []

    def on_signal(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)

    def install(self) -> None:
        for sig in FORWARDED:
            signal.signal(sig, self.on_signal)

    def signal_group(self, sig: int) -> None:
        if self.child is None:
            return
        try:
            os.killpg(self.child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def handle_pending(self) -> None:
        while self.pending:
            sig = self.pending.pop(0)
            if self.signal_received is None and sig in (signal.SIGTERM, signal.SIGINT):
                self.signal_received = sig
                note(
                    f"received {signal.Signals(sig).name}: stopping the job (SIGKILL in "
                    f"{self.grace:g}s)"
                )
                self.kill_at = time.monotonic() + self.grace
            self.signal_group(sig)

    def command(self, text: str) -> list[str]:
        shell = shutil.which("bash") or "/bin/sh"
        nodes = int(self.spec.get("num_nodes") or 1)
        srun = shutil.which("srun")
        if nodes > 1 and srun:
            # One task per node; each learns its rank from Slurm.
            prefix = "export SKYPILOT_NODE_RANK=$SLURM_NODEID SKY_MINI_NODE_RANK=$SLURM_NODEID; "
            return [
                srun, "--export=ALL", f"--nodes={nodes}", f"--ntasks={nodes}",
                "--ntasks-per-node=1", "--kill-on-bad-exit=1", shell, "-c", prefix + text,
            ]  # fmt: skip
        return [shell, "-c", text]

    def run_phase(self, text: str) -> int:
        workdir = self.spec.get("workdir") or os.getcwd()
        self.child = subprocess.Popen(
            self.command(text), cwd=workdir, start_new_session=True, close_fds=True
        )
        while True:
            self.handle_pending()
            try:
                return self.child.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline and not self.timed_out:
                self.timed_out = True
                timeout = self.spec.get("timeout_seconds")
                note(f"timed out after {timeout:g}s: SIGTERM now, SIGKILL in {self.grace:g}s")
                self.signal_group(signal.SIGTERM)
                self.kill_at = now + self.grace
            if self.kill_at is not None and now >= self.kill_at:
                note("grace period over: SIGKILL to the job's process group")
                self.signal_group(signal.SIGKILL)
                self.kill_at = now + 3600.0

    def main(self) -> int:
        spec = self.spec
        self.install()
        ips = node_ips()
        env = os.environ
        env.setdefault("SKYPILOT_NODE_RANK", "0")
        env.setdefault("SKY_MINI_NODE_RANK", "0")
        env["SKYPILOT_NODE_IPS"] = env["SKY_MINI_NODE_IPS"] = "\n".join(ips)
        env["SKYPILOT_NUM_NODES"] = env["SKY_MINI_NUM_NODES"] = str(spec.get("num_nodes") or 1)
        started = {
            "job_id": spec.get("job_id"),
            "slurm_job_id": env.get("SLURM_JOB_ID"),
            "host": socket.gethostname(),
            "started_at": time.time(),
        }
        phase = "setup" if spec.get("setup") else "run"
        atomic_write(spec["started_path"], {**started, "phase": phase})
        returncode = 0
        try:
            if spec.get("setup"):
                returncode = self.run_phase(str(spec["setup"]))
            if returncode == 0 and not self.timed_out and self.signal_received is None:
                if phase == "setup":
                    phase = "run"
                    atomic_write(spec["started_path"], {**started, "phase": phase})
                returncode = self.run_phase(str(spec["run"]))
        except OSError as exc:
            note(f"cannot start the {phase} command in {spec.get('workdir')}: {exc}")
            returncode = 127
        killed_by = -returncode if returncode < 0 else None
        exit_code = 128 - returncode if returncode < 0 else returncode
        record = {
            **started,
            "phase": phase,
            "exit_code": exit_code,
            "signal": killed_by,
            "timed_out": self.timed_out,
            "signal_received": self.signal_received,
            "peak_memory_bytes": peak_memory_bytes(),
            "finished_at": time.time(),
        }
        atomic_write(spec["exit_path"], record)
        return exit_code


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        note("usage: batch_wrapper.py SPEC.json")
        return 2
    with open(argv[0]) as handle:
        spec = json.load(handle)
    return Wrapper(spec).main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
