"""Building one ``sbatch`` call per job: options, the job's name, its environment and files.

Every job is one allocation: ``--parsable --no-requeue`` (22.05 requeues by default),
``--cpus-per-task``, ``--mem``, ``--time`` as a backstop only (Slurm's limit is
minute-granular; the wrapper enforces sky-mini's timeout to the second), ``--nodes``,
``--gres``, ``--chdir``, ``--output``/``--error`` to the job's log under the home, and
``--export=NONE``: the job's environment is built here and handed to the wrapper in a 0600
file, so a job launched from cron sees what sky-mini promises, not the CLI's accident of a
shell (and secrets never appear on a command line).
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

JOB_NAME_PREFIX = "sky-mini"
TIME_BACKSTOP_EXTRA_SECONDS = 60.0
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Not passed on: a marker would make the next server's sweep kill the job; SLURM_* from the
# submitting shell would confuse the job's own Slurm tools (its allocation sets its own).
DROPPED_ENV = frozenset({"SKY_MINI_MARKER", "SLURM_JOB_ID", "SLURM_JOBID", "SLURM_NODELIST"})
# sbatch's --parsable answer: "123" or "123;cluster".
_PARSABLE_RE = re.compile(r"^(\d+)(?:;\S+)?$")


def job_name(home_key: str, job_id: int) -> str:
    """The Slurm job name: finds our job again after a crash (never submit twice)."""
    return f"{JOB_NAME_PREFIX}-{home_key}-{job_id}"


def parse_job_name(name: str, home_key: str) -> int | None:
    prefix = f"{JOB_NAME_PREFIX}-{home_key}-"
    if not name.startswith(prefix):
        return None
    tail = name[len(prefix) :]
    return int(tail) if tail.isdigit() else None


def parse_sbatch_answer(text: str) -> str | None:
    """The job ID from ``sbatch --parsable`` output (last non-empty line), or None."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    match = _PARSABLE_RE.match(lines[-1])
    return match.group(1) if match else None


@dataclass(frozen=True)
class SlurmOptions:
    """Config ``slurm:`` plus the partition an ``infra: slurm/<partition>`` names."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobFiles:
    """Where one job's Slurm-side files live (all next to its log, under the home)."""

    log_path: str
    spec_path: str
    script_path: str
    started_path: str
    exit_path: str

    @classmethod
    def for_log(cls, log_path: str, slurm_dir: str, job_id: int) -> JobFiles:
        return cls(
            log_path=log_path,
            spec_path=os.path.join(slurm_dir, f"job-{job_id}.json"),
            script_path=os.path.join(slurm_dir, f"job-{job_id}.sh"),
            started_path=f"{log_path}.started.json",
            exit_path=f"{log_path}.exit.json",
        )


def partition_of(infra: str, options: SlurmOptions) -> str | None:
    """``slurm/<partition>`` wins over config ``slurm.partition``."""
    if infra.startswith("slurm/"):
        return infra.split("/", 1)[1] or options.partition
    return options.partition


def time_limit_minutes(timeout_seconds: float | None, grace_seconds: float) -> int | None:
    if not timeout_seconds:
        return None
    total = float(timeout_seconds) + grace_seconds + TIME_BACKSTOP_EXTRA_SECONDS
    return max(1, math.ceil(total / 60.0))


def gres_for(resources: dict[str, Any]) -> str | None:
    """The task's GPUs as ``--gres``: ``{accelerator: A100, gpus: 2}`` → ``gpu:a100:2``, any
    GPU → ``gpu:2``; a fraction asks for a whole device (Slurm shares none). None without."""
    count = float(resources.get("gpus") or 0.0)
    if count <= 0:
        return None
    name = resources.get("accelerator")
    whole = max(1, math.ceil(count))
    return f"gpu:{str(name).lower()}:{whole}" if name else f"gpu:{whole}"


def build_sbatch_argv(
    *,
    job_id: int,
    home_key: str,
    task: dict[str, Any],
    infra: str,
    files: JobFiles,
    options: SlurmOptions,
    grace_seconds: float,
) -> list[str]:
    resources = task.get("resources") or {}
    cpus = max(1, math.ceil(float(resources.get("cpus") or 1.0)))
    argv = [
        "sbatch",
        "--parsable",
        "--no-requeue",
        f"--job-name={job_name(home_key, job_id)}",
        f"--cpus-per-task={cpus}",
        f"--nodes={int(task.get('num_nodes') or 1)}",
        "--ntasks-per-node=1",
        f"--output={files.log_path}",
        f"--error={files.log_path}",
        "--open-mode=append",
        f"--chdir={task.get('workdir') or os.path.dirname(files.log_path)}",
        "--export=NONE",
    ]
    memory = resources.get("memory_bytes")
    if memory:
        argv.append(f"--mem={max(1, math.ceil(int(memory) / (1024 * 1024)))}M")
    minutes = time_limit_minutes(resources.get("timeout_seconds"), grace_seconds)
    if minutes is not None:
        argv.append(f"--time={minutes}")
    gres = gres_for(resources)
    if gres:
        argv.append(f"--gres={gres}")
    partition = partition_of(infra, options)
    if partition:
        argv.append(f"--partition={partition}")
    if options.account:
        argv.append(f"--account={options.account}")
    if options.qos:
        argv.append(f"--qos={options.qos}")
    argv.extend(options.sbatch_args)
    argv.append(files.script_path)
    return argv


def build_job_env(
    base: dict[str, str], envs: dict[str, str], job_id: int, num_nodes: int
) -> dict[str, str]:
    """The job's whole environment: the submitter's, its envs, and what sky-mini promises."""
    env = {k: v for k, v in base.items() if k not in DROPPED_ENV}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", os.path.expanduser("~"))
    env.update(envs)
    env["SKY_MINI_JOB_ID"] = str(job_id)
    env["SKYPILOT_TASK_ID"] = f"sky-mini-{job_id}"
    env["SKYPILOT_NUM_NODES"] = env["SKY_MINI_NUM_NODES"] = str(num_nodes)
    env.setdefault("SKYPILOT_NUM_GPUS_PER_NODE", "0")
    return env


def build_wrapper_spec(
    *, job_id: int, task: dict[str, Any], files: JobFiles, grace_seconds: float
) -> dict[str, Any]:
    resources = task.get("resources") or {}
    return {
        "job_id": job_id,
        "setup": task.get("setup"),
        "run": task.get("run") or "true",
        "workdir": task.get("workdir"),
        "timeout_seconds": resources.get("timeout_seconds"),
        "grace_seconds": grace_seconds,
        "num_nodes": int(task.get("num_nodes") or 1),
        "started_path": files.started_path,
        "exit_path": files.exit_path,
    }


def batch_script(wrapper_path: str, spec_path: str, env_path: str) -> str:
    """The script sbatch runs: load the job's environment, exec the wrapper.

    The interpreter is this server's Python when the node has it at the same path (a
    shared install), else ``python3``.
    """
    python = sys.executable or "python3"
    return (
        "#!/bin/sh\n"
        "# written by sky-mini; runs the job through its batch wrapper\n"
        f"PY={shell_quote(python)}\n"
        '[ -x "$PY" ] || PY=python3\n'
        f'exec "$PY" -c {shell_quote(ENV_LOADER)} {shell_quote(env_path)} '
        f"{shell_quote(wrapper_path)} {shell_quote(spec_path)}\n"
    )


# Replace the environment with the job's (keeping Slurm's own SLURM_* variables), then run
# the wrapper in the same process.
ENV_LOADER = (
    "import json,os,runpy,sys\n"
    "env=json.load(open(sys.argv[1]))\n"
    "keep={k:v for k,v in os.environ.items() if k.startswith(('SLURM_','SLURMD_'))}\n"
    "os.environ.clear();os.environ.update(env);os.environ.update(keep)\n"
    "sys.argv=sys.argv[2:]\n"
    "runpy.run_path(sys.argv[0],run_name='__main__')\n"
)


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
