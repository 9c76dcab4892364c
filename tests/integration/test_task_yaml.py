"""SkyPilot task YAML end to end: pipelines, --after, secrets, GPUs, file_mounts, dry runs —
through the real CLI against a real server in a temporary home."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import SkyMini, wait_for


def write(tmp_path: Path, text: str, name: str = "task.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def queue(sky: SkyMini) -> list[dict[str, object]]:
    records: list[dict[str, object]] = sky.run(
        "jobs", "queue", "--all", "--json", check=True
    ).json()
    return sorted(records, key=lambda r: int(str(r["id"])))


PIPELINE = """\
name: etl
---
name: extract
run: echo extracted > {out}/a
---
name: load
run: {load}
---
name: report
setup: cat {out}/a
"""


def test_pipeline_runs_in_order_and_queue_groups_it(sky: SkyMini, tmp_path: Path) -> None:
    sky.serve_foreground()
    path = write(tmp_path, PIPELINE.format(out=tmp_path, load=f"test -s {tmp_path}/a"))
    result = sky.run("jobs", "launch", "--async", path, check=True)
    assert result.out.split() == ["1", "2", "3"]
    waited = sky.run("jobs", "wait", "1", "2", "3", timeout=90)
    assert waited.code == 0, waited
    records = queue(sky)
    assert [r["status"] for r in records] == ["SUCCEEDED"] * 3
    assert [r["after"] for r in records] == [[], [1], [2]]
    assert {r["pipeline"] for r in records} == {"etl"}
    starts = [float(str(r["started_at"])) for r in records]
    ends = [float(str(r["finished_at"])) for r in records]
    assert starts[1] >= ends[0] and starts[2] >= ends[1]
    assert sky.run("jobs", "logs", "3", "--no-follow", check=True).out == "extracted\n"
    table = sky.run("jobs", "queue", check=True).out.splitlines()
    header = next(i for i, line in enumerate(table) if "[etl]" in line)
    assert [line.split()[1] for line in table[header + 1 : header + 4]] == [
        "extract",
        "load",
        "report",
    ]


def test_pipeline_failure_cancels_the_rest_naming_it(sky: SkyMini, tmp_path: Path) -> None:
    sky.serve_foreground()
    marker = tmp_path / "ran"
    path = write(
        tmp_path,
        PIPELINE.format(out=tmp_path, load="exit 4").replace(
            f"setup: cat {tmp_path}/a", f"setup: touch {marker}"
        ),
    )
    result = sky.run("jobs", "launch", path, timeout=90)
    assert result.code == 4, result
    records = queue(sky)
    assert [r["status"] for r in records] == ["SUCCEEDED", "FAILED", "CANCELLED"]
    assert records[2]["reason_code"] == "dependency_failed"
    assert "job 2 (load)" in str(records[2]["reason"])
    assert not marker.exists()


def test_after_flag_waits_then_runs_and_unknown_id_is_refused(sky: SkyMini, tmp_path: Path) -> None:
    sky.serve_foreground()
    gate = tmp_path / "go"
    first = int(
        sky.run(
            "jobs",
            "launch",
            "--async",
            "--",
            "sh",
            "-c",
            f"while [ ! -e {gate} ]; do sleep 0.05; done",
            check=True,
        ).out
    )
    second = int(
        sky.run("jobs", "launch", "--async", "--after", str(first), "--", "true", check=True).out
    )
    wait_for(
        lambda: sky.job(second)["reason"] == f"waiting for job {first}",
        message="second waits for first",
    )
    assert sky.job(second)["status"] == "PENDING"
    gate.touch()
    sky.wait_job(second, ("SUCCEEDED",), timeout=60)
    refused = sky.run("jobs", "launch", "--async", "--after", f"{first},99", "--", "true")
    assert refused.code == 2 and "--after" in refused.err and "99" in refused.err
    assert len(queue(sky)) == 2  # nothing recorded


def test_secrets_reach_the_job_but_no_record_log_or_status(sky: SkyMini, tmp_path: Path) -> None:
    value = "s3cr3t-value-8842"
    path = write(tmp_path, "secrets: {API_KEY: null}\nrun: echo key=$API_KEY\n")
    refused = sky.run("jobs", "launch", "--async", path)
    assert refused.code == 2 and "secrets.API_KEY" in refused.err and "--secret" in refused.err
    sky.serve_foreground()
    sky.extra_env["API_KEY"] = value  # `--secret API_KEY` takes it from the environment
    job = int(sky.run("jobs", "launch", "--async", "--secret", "API_KEY", path, check=True).out)
    sky.wait_job(job, ("SUCCEEDED",), timeout=60)
    assert sky.run("jobs", "logs", str(job), "--no-follow", check=True).out == f"key={value}\n"
    assert_secret_absent(sky, value, job)


def test_negative_control_secret_in_record_is_caught(sky: SkyMini, tmp_path: Path) -> None:
    value = "s3cr3t-value-1177"
    path = write(tmp_path, "secrets: {API_KEY: null}\nrun: echo ok\n")
    sky.serve_foreground()
    sky.extra_env["SKY_MINI_DISABLE"] = "secretfile"
    job = int(
        sky.run("jobs", "launch", "--async", "--secret", f"API_KEY={value}", path, check=True).out
    )
    sky.wait_job(job, ("SUCCEEDED",), timeout=60)
    try:
        assert_secret_absent(sky, value, job)
    except AssertionError:
        return
    raise AssertionError("the secrecy check did not notice a secret written into the record")


def assert_secret_absent(sky: SkyMini, value: str, job: int) -> None:
    outputs = [
        sky.run("jobs", "queue", "--all", "--json", check=True).out,
        sky.run("jobs", "queue", "--all", check=True).out,
        sky.run("api", "status", "--json").out,
        sky.run("api", "logs", "--tail", "1000").out,
    ]
    for text in outputs:
        assert value not in text
    for root, _dirs, files in os.walk(sky.home):
        for name in files:
            full = os.path.join(root, name)
            if full.endswith(f"logs/{job}.log") or not os.path.isfile(full):
                continue
            with open(full, "rb") as handle:
                assert value.encode() not in handle.read(), full
    assert not os.path.exists(os.path.join(sky.home, "secrets", f"{job}.json"))


def test_null_env_must_be_given_at_launch(sky: SkyMini, tmp_path: Path) -> None:
    path = write(tmp_path, "envs: {DATE: null, N: 3}\nrun: echo $DATE $N\n")
    refused = sky.run("jobs", "launch", "--async", path)
    assert refused.code == 2 and "envs.DATE" in refused.err and "--env DATE=" in refused.err
    assert not os.path.exists(os.path.join(sky.home, "jobs", "1.json"))
    sky.serve_foreground()
    result = sky.run("jobs", "launch", "--env", "DATE=2026-12-01", path, timeout=60)
    assert result.code == 0 and result.out == "2026-12-01 3\n", result


def test_gpus_are_reserved_and_exposed(sky: SkyMini, tmp_path: Path) -> None:
    sky.extra_env["SKY_MINI_GPUS"] = "H100:2"
    sky.serve_foreground()
    gate = tmp_path / "go"
    hold = write(
        tmp_path,
        "resources: {accelerators: H100:2}\n"
        f"run: echo $CUDA_VISIBLE_DEVICES $SKYPILOT_NUM_GPUS_PER_NODE; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done\n",
        "hold.yaml",
    )
    one = write(
        tmp_path,
        "resources: {accelerators: 'H100:1'}\nrun: echo $CUDA_VISIBLE_DEVICES\n",
        "one.yaml",
    )
    first = int(sky.run("jobs", "launch", "--async", hold, check=True).out)
    sky.wait_job(first, ("RUNNING",))
    second = int(sky.run("jobs", "launch", "--async", one, check=True).out)
    wait_for(
        lambda: str(sky.job(second)["reason"]).startswith("waiting for 1 H100"),
        message="second waits for a GPU",
    )
    plain = int(
        sky.run(
            "jobs",
            "launch",
            "--async",
            "--",
            "sh",
            "-c",
            'echo "[$CUDA_VISIBLE_DEVICES]"',
            check=True,
        ).out
    )
    sky.wait_job(plain, ("SUCCEEDED",), timeout=60)
    gate.touch()
    sky.wait_job(second, ("SUCCEEDED",), timeout=60)
    logs = [sky.run("jobs", "logs", str(j), "--no-follow", check=True).out for j in (1, 2, 3)]
    assert logs == ["0,1 2\n", "0\n", "[]\n"]
    never = write(tmp_path, "resources: {accelerators: A100:1}\nrun: echo\n", "a100.yaml")
    refused = sky.run("jobs", "launch", "--async", never)
    assert refused.code == 2
    assert "resources.accelerators" in refused.err and "H100, H100" in refused.err


def test_any_of_takes_the_first_candidate_that_fits(sky: SkyMini, tmp_path: Path) -> None:
    sky.extra_env.update({"SKY_MINI_GPUS": "T4:1", "SKY_MINI_CPUS": "2"})
    path = write(
        tmp_path,
        "resources:\n  memory: 1\n  any_of:\n    - {accelerators: A100:8}\n"
        "    - {accelerators: T4:1, cpus: 2}\nrun: echo\n",
    )
    plan = sky.run("jobs", "launch", "--dry-run", path)
    assert plan.code == 0, plan
    assert "2 CPU, 1.0 GiB, 1 T4" in plan.out
    assert not os.path.exists(sky.home)


def test_dry_run_prints_the_plan_and_records_nothing(sky: SkyMini, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = write(
        tmp_path,
        "name: train\nworkdir: .\nenvs: {EPOCHS: 2}\nfile_mounts: {/tmp/i14-never: ./data}\n"
        "resources: {cpus: 1+, memory: 1+, use_spot: true, disk_size: 256}\n"
        "setup: pip --version\nrun: |\n  echo one\n  echo two\n",
    )
    result = sky.run("jobs", "launch", "--dry-run", path)
    assert result.code == 0, result
    for text in (
        "infra:       local",
        "1 CPU, 1.0 GiB",
        "EPOCHS",
        "echo one",
        "echo two",
        "/tmp/i14-never ->",
        "pip --version",
    ):
        assert text in result.out
    assert "resources.use_spot, resources.disk_size" in result.err
    assert result.err.count("\n") == 1
    assert not os.path.exists(sky.home)
    bad = sky.run(
        "jobs", "launch", "--dry-run", write(tmp_path, "run: x\nnum_nodes: 2\n", "b.yaml")
    )
    assert bad.code == 2 and "num_nodes" in bad.err and "needs --infra slurm" in bad.err
    cmd = sky.run("jobs", "launch", "--dry-run", "--", "echo", "hi")
    assert cmd.code == 0 and "run:         echo hi" in cmd.out
    assert not os.path.exists(sky.home)


def test_refusals_name_the_key_and_what_to_do(sky: SkyMini, tmp_path: Path) -> None:
    cases = {
        "resources: {infra: aws}\nrun: x\n": ("resources.infra", "--infra local"),
        "resources: {infra: k8s/ctx}\nrun: x\n": ("resources.infra", "Kubernetes"),
        "resources: {cloud: gcp}\nrun: x\n": ("resources.cloud", "--infra local"),
        "resources: {instance_type: p3.2xlarge}\nrun: x\n": ("resources.instance_type", "--infra"),
        "file_mounts: {/data: s3://bucket/x}\nrun: x\n": ("file_mounts./data", "bucket"),
        "file_mounts: {/d: {source: gs://b, mode: MOUNT}}\nrun: x\n": ("file_mounts./d", "bucket"),
        "workdir: {url: https://github.com/a/b, ref: main}\nrun: x\n": ("workdir", "clone it"),
        "name: only-a-name\n": ("run", "missing"),
        "run: x\n---\nrun: [1]\n": ("run[0]", "document 2"),
    }
    for index, (text, (key, words)) in enumerate(cases.items()):
        result = sky.run("jobs", "launch", "--async", write(tmp_path, text, f"c{index}.yaml"))
        assert result.code == 2, (text, result)
        assert f"key '{key}'" in result.err and words in result.err, (text, result.err)
        assert "Traceback" not in result.err
    assert not os.path.exists(os.path.join(sky.home, "jobs", "1.json"))
    # --infra local overrides the file's placement: it runs here.
    override = sky.run(
        "jobs",
        "launch",
        "--dry-run",
        "--infra",
        "local",
        write(tmp_path, "resources: {infra: aws, region: us-east-1}\nrun: x\n", "o.yaml"),
    )
    assert override.code == 0 and "infra:       local" in override.out, override
    assert "resources.region" in override.err and "resources.infra" in override.err


def test_setup_only_task_file_mounts_and_skypilot_env(sky: SkyMini, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f.txt").write_text("mounted\n")
    dest = tmp_path / "mnt" / "in"
    path = write(
        tmp_path,
        f"file_mounts: {{{dest}: ./in}}\nsetup: cat {dest}/f.txt; "
        "echo $SKYPILOT_NODE_RANK $SKYPILOT_NUM_NODES $SKYPILOT_NODE_IPS "
        "$SKYPILOT_NUM_GPUS_PER_NODE ${SKYPILOT_TASK_ID:+has-task-id}\n",
    )
    sky.serve_foreground()
    result = sky.run("jobs", "launch", path, timeout=60)
    assert result.code == 0, result
    assert result.out == "mounted\n0 1 127.0.0.1 0 has-task-id\n"
    assert os.path.islink(dest) and os.readlink(dest) == str(tmp_path / "in")
