"""Running Slurm's client tools: bounded in time, counted, and behind one seam for tests.

Every call goes through :meth:`SlurmTools.run`, which never raises for a tool's failure (a
missing binary, a timeout, a non-zero exit are all a :class:`ToolResult`), so one
unreachable controller is a status row and a log line, never a crashed server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sky_mini.server.backends.slurm.states import (
    SQUEUE_FORMAT,
    SlurmJob,
    parse_scontrol,
    parse_squeue,
)

TOOL_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def message(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " ".join(line.strip() for line in text[-3:]) or f"exit {self.returncode}"


Runner = Callable[[Sequence[str], "str | None"], ToolResult]


def run_subprocess(argv: Sequence[str], stdin: str | None = None) -> ToolResult:
    """Run one tool to its end (any thread). The child is registered with the server's
    reaper as this thread's own, so the tick loop never reaps it from under us."""
    from sky_mini.server import tied

    exe = shutil.which(argv[0])
    if exe is None:
        return ToolResult(127, "", f"{argv[0]}: not found on PATH (install slurm-client)")
    try:
        with tied.THREAD_CHILDREN_LOCK:
            proc = subprocess.Popen(
                [exe, *argv[1:]],
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ, SLURM_TIME_FORMAT="standard"),
            )
            tied.own_thread_child(proc.pid)
    except OSError as exc:
        return ToolResult(126, "", f"{argv[0]}: {exc}")
    try:
        try:
            out, err = proc.communicate(stdin, timeout=TOOL_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by the handle we started it with
            proc.communicate()
            return ToolResult(124, "", f"{argv[0]} did not answer within {TOOL_TIMEOUT_SECONDS:g}s")
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        tied.release_thread_child(proc.pid)
    return ToolResult(proc.returncode, out, err)


class QueryFailed(Exception):
    """A status query failed: nothing may change on its account."""


class SlurmTools:
    def __init__(self, runner: Runner | None = None) -> None:
        self.runner: Runner = runner or run_subprocess
        self.calls: Counter[str] = Counter()

    def run(self, argv: Sequence[str], stdin: str | None = None) -> ToolResult:
        self.calls[argv[0]] += 1
        return self.runner(list(argv), stdin)

    def squeue(self, slurm_ids: Sequence[str]) -> dict[str, SlurmJob]:
        """One query for every ID. A job Slurm no longer knows is simply absent."""
        if not slurm_ids:
            return {}
        result = self.run(
            ["squeue", "-h", "-t", "all", "-j", ",".join(slurm_ids), "-O", SQUEUE_FORMAT]
        )
        if not result.ok:
            if "Invalid job id" in result.stderr:
                return {}  # every ID asked for is forgotten (22.05 fails the whole call)
            raise QueryFailed(result.message())
        return parse_squeue(result.stdout)

    def squeue_by_name(self, names: Sequence[str]) -> dict[str, SlurmJob]:
        """Jobs by name (re-attach after a crash between sbatch and the record)."""
        result = self.run(["squeue", "-h", "-t", "all", "-n", ",".join(names), "-O", SQUEUE_FORMAT])
        if not result.ok:
            raise QueryFailed(result.message())
        return parse_squeue(result.stdout)

    def scontrol_job(self, slurm_id: str) -> SlurmJob | None:
        result = self.run(["scontrol", "show", "job", slurm_id])
        if not result.ok:
            if "Invalid job id" in result.stderr:
                return None
            raise QueryFailed(result.message())
        return parse_scontrol(result.stdout).get(slurm_id)

    def controller_info(self, version: str | None) -> dict[str, Any] | str:
        """For ``api status``: the controller's version, partitions and node states, or why
        it could not be asked. ``version`` known from an earlier probe is not asked again."""
        result = self.run(["sinfo", "-h", "-N", "-o", "%N|%P|%T"])
        if not result.ok:
            return result.message()
        nodes: dict[str, int] = {}
        partitions: set[str] = set()
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                partitions.add(parts[1])
                nodes[parts[2]] = nodes.get(parts[2], 0) + 1
        if version is None:
            answer = self.run(["sinfo", "--version"])
            version = answer.stdout.strip() if answer.ok else None
        return {
            "reachable": True,
            "version": version,
            "partitions": sorted(partitions),
            "nodes": nodes,
            "error": None,
        }
