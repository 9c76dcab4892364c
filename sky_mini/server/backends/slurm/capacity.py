"""What a Slurm partition can ever give one job, asked once at submit (``jobs launch``,
``--dry-run``), so a job the cluster can never run is refused (exit 2, nothing recorded)
instead of failing later.

One ``sinfo -h -N`` call (bounded by ``SINFO_TIMEOUT_SECONDS``) lists every node of every
partition with its CPUs, memory (MB) and GRES. A job fits when enough nodes of its partition
(``num_nodes``) each have its CPUs, memory and GPUs; a down node counts (it may come back:
the job then pends with Slurm's reason). A cluster that does not answer changes nothing:
the job is recorded as before and one warning line says so.

Standard library only: this runs in the CLI, on the submit path of Slurm jobs only.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from typing import Any, NamedTuple

from sky_mini.errors import SpecError

SINFO_TIMEOUT_SECONDS = float(os.environ.get("SKY_MINI_SLURM_SINFO_TIMEOUT", "5"))
SINFO_FORMAT = "%N|%P|%c|%m|%G"


class Node(NamedTuple):
    name: str
    cpus: int
    memory_mb: int
    gpus: dict[str, int]  # GRES type (lower case; "" for untyped) -> count


class Cluster(NamedTuple):
    partitions: dict[str, list[Node]]
    default: str | None


def parse_gres(text: str) -> dict[str, int]:
    """``gpu:a100:2(S:0-1),gpu:1,shard:4`` → ``{"a100": 2, "": 1}``; ``(null)`` → ``{}``."""
    gpus: dict[str, int] = {}
    for item in re.sub(r"\([^)]*\)", "", text).split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        rest = parts[1:]
        count = int(rest.pop()) if rest and rest[-1].isdigit() else 1
        kind = rest[0].lower() if rest else ""
        gpus[kind] = gpus.get(kind, 0) + count
    return gpus


def parse_sinfo(text: str) -> Cluster:
    """Lines of ``SINFO_FORMAT``; the default partition is marked ``*`` by sinfo."""
    partitions: dict[str, list[Node]] = {}
    default = None
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[2].strip().rstrip("+").isdigit():
            continue
        name, partition = parts[0].strip(), parts[1].strip()
        if partition.endswith("*"):
            partition = partition[:-1]
            default = partition
        memory = parts[3].strip().rstrip("+")
        node = Node(
            name,
            int(parts[2].strip().rstrip("+")),
            int(memory) if memory.isdigit() else 0,
            parse_gres(parts[4]),
        )
        partitions.setdefault(partition, []).append(node)
    return Cluster(partitions, default)


def ask_cluster() -> Cluster | str:
    """The cluster's partitions, or why it could not be asked."""
    exe = shutil.which("sinfo")
    if exe is None:
        return "sinfo is not on PATH (install slurm-client)"
    try:
        done = subprocess.run(
            [exe, "-h", "-N", "-o", SINFO_FORMAT],
            capture_output=True,
            text=True,
            timeout=SINFO_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within {SINFO_TIMEOUT_SECONDS:g}s"
    except OSError as exc:
        return f"sinfo: {exc}"
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"sinfo: {lines[-1].strip() if lines else f'exit {done.returncode}'}"
    return parse_sinfo(done.stdout)


class PartitionCheck:
    """Checks each Slurm task of one launch against one ``sinfo`` answer (asked lazily)."""

    def __init__(self, configured_partition: str | None) -> None:
        self.configured = configured_partition
        self.answer: Cluster | str | None = None
        self.warned = False

    def check(self, task: Any, where: str, infra: str) -> None:
        """Raise :class:`SpecError` for what the partition can never give; warn (once) and
        accept when the cluster cannot be asked."""
        if self.answer is None:
            self.answer = ask_cluster()
        if isinstance(self.answer, str):
            if not self.warned:
                self.warned = True
                print(
                    f"sky-mini: warning: could not ask the Slurm cluster what it can give "
                    f"({self.answer}); recorded anyway: it waits PENDING until the controller "
                    "answers",
                    file=sys.stderr,
                )
            return
        named = infra.split("/", 1)[1] if "/" in infra else None
        partition = named or self.configured or self.answer.default
        if partition is None:
            return  # no default partition: sbatch says what it wants
        nodes = self.answer.partitions.get(partition)
        if nodes is None:
            known = ", ".join(sorted(self.answer.partitions)) or "none"
            key = "resources.infra" if named else "slurm.partition (config)"
            raise SpecError(
                where,
                key,
                f"the Slurm cluster has no partition {partition!r} (it has: {known}); "
                "pick one of them with --infra slurm/PARTITION",
            )
        check_fits_partition(task, where, partition, nodes)


def check_fits_partition(task: Any, where: str, partition: str, nodes: list[Node]) -> None:
    """Refuse, naming the key and the partition's own figure, what no node (or not enough
    nodes) of ``partition`` can give: CPUs, memory, GPUs, ``num_nodes``."""
    res = task.resources
    cpus = max(1, math.ceil(float(res.cpus or 1.0)))  # as --cpus-per-task asks
    memory_mb = math.ceil(res.memory_bytes / (1024 * 1024)) if res.memory_bytes else 0
    gpus = max(1, math.ceil(res.gpus)) if res.gpus else 0
    kind = (res.accelerator or "").lower()
    what = f"partition {partition!r}"

    def node_gpus(node: Node) -> int:
        return node.gpus.get(kind, 0) if kind else sum(node.gpus.values())

    most_cpus = max(n.cpus for n in nodes)
    if cpus > most_cpus:
        raise SpecError(
            where,
            "resources.cpus",
            f"{cpus} CPUs per node is more than any node of Slurm {what} has (at most "
            f"{most_cpus}); lower it or pick another partition",
        )
    most_mb = max(n.memory_mb for n in nodes)
    if memory_mb > most_mb:
        raise SpecError(
            where,
            "resources.memory",
            f"{memory_mb} MB per node is more than any node of Slurm {what} has (at most "
            f"{most_mb} MB, its RealMemory); lower it or pick another partition",
        )
    if gpus:
        most_gpus = max(node_gpus(n) for n in nodes)
        if gpus > most_gpus:
            name = res.accelerator or "GPU"
            raise SpecError(
                where,
                "resources.accelerators",
                f"{gpus} {name} per node is more than any node of Slurm {what} has (at most "
                f"{most_gpus}{' ' + name if most_gpus else ''}, from its GRES); lower it or "
                "pick another partition",
            )
    fitting = [
        n for n in nodes if n.cpus >= cpus and n.memory_mb >= memory_mb and node_gpus(n) >= gpus
    ]
    num_nodes = int(getattr(task, "num_nodes", 1) or 1)
    if num_nodes > len(fitting):
        detail = f"{len(nodes)} nodes"
        if len(fitting) < len(nodes):
            detail = f"{len(fitting)} of its {len(nodes)} nodes can give what one node needs"
        raise SpecError(
            where,
            "num_nodes",
            f"{num_nodes} nodes is more than Slurm {what} has ({detail}); lower it or pick "
            "another partition",
        )
