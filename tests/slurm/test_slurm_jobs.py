"""Jobs on a real Slurm cluster, through the real CLI: outcomes, OOM, timeout, cancel,
refusals, queueing, environment, following logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import SkyMini, pid_alive, wait_for
from tests.slurm.conftest import Cluster, dead_controller_conf

JOB_TIMEOUT = 90.0
LOCAL_PROMPT_SECONDS = 4.0  # a local `true`, attached: ~0.3 s measured at load 35; inline ~9 s


def launch(sky: SkyMini, *args: str) -> int:
    result = sky.run("jobs", "launch", "--async", "--infra", "slurm", *args, check=True)
    return int(result.out.strip())


def queue_json(sky: SkyMini) -> dict[int, dict[str, object]]:
    data = sky.run("jobs", "queue", "--all", "--json", check=True).json()
    return {int(r["id"]): r for r in data}


def wait_status(
    sky: SkyMini, cluster: Cluster, job_id: int, statuses: tuple[str, ...], timeout: float = 90
) -> dict[str, object]:
    """Poll `jobs queue --json` (what a user runs) until the job is in ``statuses``."""

    def check() -> dict[str, object] | None:
        record = queue_json(sky).get(job_id)
        return record if record and record["status"] in statuses else None

    try:
        result: dict[str, object] = wait_for(check, timeout, f"job {job_id} in {statuses}")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; record {queue_json(sky).get(job_id)}{cluster.said()}"
        ) from None
    return result


def test_success_and_exit_codes(slurm_sky: SkyMini, slurm_cluster: Cluster) -> None:
    result = slurm_sky.run(
        "jobs", "launch", "--infra", "slurm", "--", "sh", "-c", "echo hello; exit 3",
        timeout=JOB_TIMEOUT,
    )  # fmt: skip
    assert result.code == 3, (result, slurm_cluster.said())
    assert "hello" in result.out
    ok = launch(slurm_sky, "--", "true")
    record = wait_status(slurm_sky, slurm_cluster, ok, ("SUCCEEDED", "FAILED", "KILLED"))
    assert record["status"] == "SUCCEEDED" and record["exit_code"] == 0
    assert record["infra"] == "slurm" and str(record["slurm_job_id"]).isdigit()
    assert int(record["peak_memory_bytes"] or 0) > 0  # the step cgroup's peak, via the wrapper
    shown = slurm_cluster.run("scontrol", "show", "job", str(record["slurm_job_id"])).stdout
    start = shown.split("StartTime=", 1)[1].split()[0]
    slurm_start = time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S"))
    assert record["started_at"] == slurm_start, (record, shown)  # Slurm's own start time
    queue = slurm_sky.run("jobs", "queue", "--all", check=True).out
    assert f"slurm:{record['slurm_job_id']}" in queue
    assert slurm_sky.run("jobs", "wait", str(ok), timeout=JOB_TIMEOUT).code == 0


@pytest.mark.parametrize(
    "shape", ["{alloc}", "{alloc} | cat", "{alloc} || true"], ids=["direct", "cat", "or-true"]
)
def test_oom_is_killed_memory_limit(slurm_sky: SkyMini, slurm_cluster: Cluster, shape: str) -> None:
    alloc = f"{sys.executable} -c 'x = bytearray(400 * 1024 * 1024); print(len(x))'"
    job = launch(slurm_sky, "--memory", "50M", "--", "bash", "-c", shape.format(alloc=alloc))
    record = wait_status(slurm_sky, slurm_cluster, job, ("SUCCEEDED", "FAILED", "KILLED"))
    assert record["status"] == "KILLED", (record, slurm_cluster.said())
    assert record["reason_code"] == "memory_limit"
    assert "50 MiB" in str(record["reason"])
    assert int(record["peak_memory_bytes"] or 0) >= 40 * 1024 * 1024, record


def test_timeout_to_the_second_with_term_trap(slurm_sky: SkyMini, slurm_cluster: Cluster) -> None:
    script = "trap 'echo cleanup-ran; exit 1' TERM; echo started; sleep 300 & wait"
    job = launch(slurm_sky, "--timeout", "5", "--", "bash", "-c", script)
    record = wait_status(slurm_sky, slurm_cluster, job, ("SUCCEEDED", "FAILED", "KILLED"), 60)
    assert record["status"] == "KILLED" and record["reason_code"] == "timeout", record
    started, finished = float(record["started_at"]), float(record["finished_at"])  # type: ignore[arg-type]
    assert finished - started < 40  # Slurm's own --time would need minutes
    logs = slurm_sky.run("jobs", "logs", str(job), "--no-follow").out
    assert "cleanup-ran" in logs, logs


def test_cancel_running_kills_setsid_grandchild(
    slurm_sky: SkyMini, slurm_cluster: Cluster, tmp_path: os.PathLike[str]
) -> None:
    pidfile = os.path.join(str(tmp_path), "grandchild.pid")
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' & echo up; sleep 300"
    job = launch(slurm_sky, "--", "bash", "-c", script)
    wait_status(slurm_sky, slurm_cluster, job, ("RUNNING",))

    def read_pid() -> str:
        if not os.path.exists(pidfile):
            return ""
        with open(pidfile) as handle:
            return handle.read().strip()

    grandchild = int(wait_for(read_pid, 30, "the grandchild's pidfile"))
    assert pid_alive(grandchild)
    slurm_sky.run("jobs", "cancel", str(job), timeout=JOB_TIMEOUT, check=True)
    record = wait_status(slurm_sky, slurm_cluster, job, ("CANCELLED", "FAILED", "KILLED"))
    assert record["status"] == "CANCELLED" and record["reason"] == "cancelled by user"
    wait_for(lambda: not pid_alive(grandchild), 30, "the setsid grandchild to die")
    # idempotent
    again = slurm_sky.run("jobs", "cancel", str(job), check=True)
    assert "already finished" in again.out


def test_cancel_pending_and_queueing_reason(slurm_sky: SkyMini, slurm_cluster: Cluster) -> None:
    first = launch(slurm_sky, "--cpus", "2", "--", "sleep", "8")
    wait_status(slurm_sky, slurm_cluster, first, ("RUNNING",))
    second = launch(slurm_sky, "--cpus", "2", "--", "echo", "second")
    third = launch(slurm_sky, "--cpus", "2", "--", "echo", "third")

    def pending_reason() -> object:
        record = queue_json(slurm_sky)[second]
        return record["status"] == "PENDING" and str(record["reason"]).startswith("Slurm: ")

    wait_for(pending_reason, 30, f"job {second} PENDING with Slurm's reason")
    slurm_sky.run("jobs", "cancel", str(third), timeout=JOB_TIMEOUT, check=True)
    cancelled = wait_status(slurm_sky, slurm_cluster, third, ("CANCELLED", "SUCCEEDED"))
    assert cancelled["status"] == "CANCELLED"
    done = wait_status(slurm_sky, slurm_cluster, second, ("SUCCEEDED", "FAILED", "KILLED"))
    assert done["status"] == "SUCCEEDED"
    assert "second" in slurm_sky.run("jobs", "logs", str(second), "--no-follow").out


def test_job_bigger_than_the_partition_is_refused_at_submit(
    slurm_sky: SkyMini, slurm_cluster: Cluster
) -> None:
    """sinfo at submit: exit 2, the key and the cluster's figure, nothing recorded."""
    cases = [
        (("--cpus", "64"), "resources.cpus", "at most 2"),
        (("--memory", "64G"), "resources.memory", "at most 4096 MB"),
    ]
    for flags, key, figure in cases:
        for mode in ("--async", "--dry-run"):
            result = slurm_sky.run("jobs", "launch", mode, "--infra", "slurm", *flags, "--", "true")
            assert result.code == 2, (result, slurm_cluster.said())
            assert key in result.err and figure in result.err and "'debug'" in result.err
            assert "Traceback" not in result.err
    unknown = slurm_sky.run("jobs", "launch", "--async", "--infra", "slurm/nope", "--", "true")
    assert unknown.code == 2 and "no partition 'nope' (it has: debug)" in unknown.err, unknown
    assert queue_json(slurm_sky) == {}
    fits = slurm_sky.run(
        "jobs", "launch", "--dry-run", "--infra", "slurm", "--cpus", "2", "--", "true"
    )
    assert fits.code == 0 and "warning" not in fits.err, fits


def test_job_sbatch_refuses_is_failed_setup(slurm_sky: SkyMini, slurm_cluster: Cluster) -> None:
    """What sinfo cannot foresee (here a node feature no node has) is sbatch's to refuse."""
    os.makedirs(slurm_sky.home, exist_ok=True)
    with open(os.path.join(slurm_sky.home, "config.yaml"), "w") as handle:
        handle.write("slurm:\n  sbatch_args: ['--constraint=nosuchfeature']\n")
    job = launch(slurm_sky, "--", "true")
    record = wait_status(slurm_sky, slurm_cluster, job, ("FAILED_SETUP", "FAILED", "SUCCEEDED"))
    assert record["status"] == "FAILED_SETUP", record
    assert "sbatch refused the job" in str(record["reason"])
    assert "Batch job submission failed" in str(record["reason"])  # sbatch's own words


def test_environment_and_workdir_under_env_i(
    slurm_sky: SkyMini, slurm_cluster: Cluster, tmp_path: os.PathLike[str]
) -> None:
    workdir = os.path.join(str(tmp_path), "work")
    os.makedirs(workdir)
    task = os.path.join(workdir, "task.yaml")
    with open(task, "w") as handle:
        handle.write(
            "workdir: .\nenvs: {GREETING: hi}\n"
            "run: 'echo cwd=$(pwd) greeting=$GREETING id=$SKY_MINI_JOB_ID "
            "rank=$SKYPILOT_NODE_RANK nodes=$SKYPILOT_NUM_NODES leak=${LEAK:-none} "
            "path=${PATH:+set}'\n"
        )
    env = {
        "SKY_MINI_HOME": slurm_sky.home,
        "SLURM_CONF": slurm_cluster.conf,
        "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin",
    }
    done = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "sky_mini",
         "jobs", "launch", "--async", "--infra", "slurm", task],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done
    job = int(done.stdout.strip())
    record = wait_status(slurm_sky, slurm_cluster, job, ("SUCCEEDED", "FAILED", "KILLED"))
    assert record["status"] == "SUCCEEDED", record
    out = slurm_sky.run("jobs", "logs", str(job), "--no-follow").out
    assert f"cwd={workdir} greeting=hi id={job} rank=0 nodes=1 leak=none path=set" in out, out


def test_logs_follow_waits_through_pending(slurm_sky: SkyMini, slurm_cluster: Cluster) -> None:
    blocker = launch(slurm_sky, "--cpus", "2", "--", "sleep", "6")
    wait_status(slurm_sky, slurm_cluster, blocker, ("RUNNING",))
    job = launch(slurm_sky, "--cpus", "2", "--", "sh", "-c", "echo one; sleep 2; echo two; exit 4")
    follower = slurm_sky.popen("jobs", "logs", str(job), "--follow")
    wait_for(lambda: queue_json(slurm_sky)[job]["status"] == "PENDING", 20, "PENDING")
    assert follower.poll() is None  # still waiting through PENDING
    out, _err = follower.communicate(timeout=JOB_TIMEOUT)
    assert b"one" in out and b"two" in out, (out, slurm_cluster.said())
    assert follower.returncode == 4


def test_json_record_carries_infra_and_slurm_id(slurm_sky: SkyMini, slurm_cluster: Cluster) -> None:
    result = slurm_sky.run("jobs", "launch", "--async", "--json", "--infra", "slurm", "--", "true")
    job = json.loads(result.out)["id"]
    record = wait_status(slurm_sky, slurm_cluster, job, ("SUCCEEDED",))
    assert record["infra"] == "slurm" and record["slurm_job_id"]


def test_bad_infra_is_exit_2_and_records_nothing(slurm_sky: SkyMini) -> None:
    result = slurm_sky.run("jobs", "launch", "--async", "--infra", "kubernetes", "--", "true")
    assert result.code == 2 and "--infra" in result.err and "Traceback" not in result.err
    assert queue_json(slurm_sky) == {}


def test_api_status_shows_controller_then_exit_4_when_unreachable(
    slurm_sky: SkyMini, slurm_cluster: Cluster, tmp_path: os.PathLike[str]
) -> None:
    job = launch(slurm_sky, "--", "true")
    wait_status(slurm_sky, slurm_cluster, job, ("SUCCEEDED",))
    healthy = slurm_sky.run("api", "status")
    assert healthy.code == 0, healthy
    assert "controller reachable" in healthy.out and "debug" in healthy.out
    assert "filesystem the compute nodes share" in healthy.out
    row = next(
        c for c in slurm_sky.run("api", "status", "--json").json()["components"]
        if c["kind"] == "slurm-controller"
    )  # fmt: skip
    assert row["slurm"]["nodes"] == {"idle": 1} and row["slurm"]["version"].startswith("slurm")
    assert slurm_sky.run("api", "stop", timeout=60).code == 0
    # The same home against a controller nobody listens on (a free port).
    bogus = dead_controller_conf(slurm_cluster, str(tmp_path))
    slurm_sky.extra_env["SLURM_CONF"] = bogus
    submitted = slurm_sky.run("jobs", "launch", "--async", "--infra", "slurm", "--", "true")
    assert submitted.code == 0, submitted  # recorded anyway, with one warning line
    assert submitted.err.count("warning: could not ask the Slurm cluster") == 1, submitted
    waiting = int(submitted.out.strip())

    def waiting_for_controller() -> bool:
        record = queue_json(slurm_sky)[waiting]
        return record["status"] == "PENDING" and "Slurm controller" in str(record["reason"])

    wait_for(waiting_for_controller, 120, "PENDING, waiting for the controller (not failed)")

    def degraded() -> bool:
        return slurm_sky.run("api", "status").code == 4

    wait_for(degraded, 90, "api status exit 4 while the controller is unreachable")
    assert "controller unreachable" in slurm_sky.run("api", "status").out


@pytest.mark.parametrize("worker", [True, False], ids=["worker", "inline-negative-control"])
def test_local_jobs_run_promptly_while_the_controller_is_unreachable(
    slurm_sky: SkyMini, slurm_cluster: Cluster, tmp_path: os.PathLike[str], worker: bool
) -> None:
    """Slurm's tools take 9-18 s to fail against a dead controller; they run in the Slurm
    backend's thread, so a local job still starts at once. Negative control: with the calls
    inline in the tick loop (SKY_MINI_DISABLE=slurm_worker) the same local job waits."""
    slurm_sky.extra_env["SLURM_CONF"] = dead_controller_conf(slurm_cluster, str(tmp_path))
    if not worker:
        slurm_sky.extra_env["SKY_MINI_DISABLE"] = "slurm_worker"
    waiting = launch(slurm_sky, "--", "true")  # auto-starts the server, which tries sbatch
    wait_for(slurm_sky.status_ok, 60, "the server up")
    durations = []
    for _ in range(2):
        began = time.monotonic()
        local = slurm_sky.run("jobs", "launch", "--infra", "local", "--", "true", timeout=120)
        durations.append(time.monotonic() - began)
        assert local.code == 0, local
    print(f"worker={worker}: attached local launches took {durations}")
    if worker:
        assert max(durations) < LOCAL_PROMPT_SECONDS, durations
        record = queue_json(slurm_sky)[waiting]
        assert record["status"] == "PENDING", record
    else:
        assert max(durations) > LOCAL_PROMPT_SECONDS, durations  # the check can fail
