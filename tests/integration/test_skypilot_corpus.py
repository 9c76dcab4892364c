"""Real SkyPilot task YAMLs (tests/fixtures/skypilot, sources in its README) through the real
CLI: every file is either accepted by ``--dry-run`` or refused for a reason that cannot hold
on this machine, with the key named; a handful really run to their end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SkyMini

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "skypilot"
MACHINE = {"SKY_MINI_CPUS": "8", "SKY_MINI_MEMORY": "32G", "SKY_MINI_GPUS": "none"}

# file -> None (accepted here) or (key named, words of the reason). The machine is fixed by
# MACHINE so the outcome does not depend on the host.
EXPECTED: dict[str, tuple[str, str] | None] = {
    "e-amd_task.yaml": ("resources.cloud", "--infra local or --infra slurm"),
    "e-autogluon.yaml": ("resources.cloud", "--infra local or --infra slurm"),
    "e-chain_dag-2_jobs.yaml": None,
    "e-custom_image.yaml": ("resources.cloud", "--infra local or --infra slurm"),
    "e-disk_size.yaml": ("resources.infra", "the cloud 'azure' is not available here"),
    "e-distributed-pytorch-train.yaml": ("num_nodes", "needs --infra slurm"),
    "e-docker-ping.yaml": ("resources.cloud", "--infra local or --infra slurm"),
    "e-dvc-dvc_pipeline.yaml": ("resources.infra", "'aws/us-east-2' is not available here"),
    "e-huggingface_glue_imdb_app.yaml": ("resources.accelerators", "has no NVIDIA GPU"),
    "e-job_queue-job.yaml": None,
    "e-job_queue-job_multinode.yaml": ("num_nodes", "needs --infra slurm"),
    "e-minimal.yaml": ("resources.infra", "the cloud 'aws' is not available here"),
    "t-autostop.yaml": ("run", "missing"),  # a resources fragment: nothing to run
    "t-failed_run_pipeline.yaml": ("num_nodes", "needs --infra slurm"),
    "t-failed_setup.yaml": None,
    "t-failed_setup_pipeline.yaml": ("resources.any_of[0].infra", "not available here"),
    "t-intermediate_bucket.yaml": None,
    "t-long_log_line.yaml": None,
    "t-long_setup.yaml": None,
    "t-minimal.yaml": None,
    "t-multi_node_sleep.yaml": None,
    "t-orphan_reap_sigkill.yaml": ("resources.cloud", "'kubernetes'"),
    "t-pipeline.yaml": ("resources.any_of[0].cloud", "--infra local or --infra slurm"),
    "t-pipeline_aws.yaml": ("resources.cloud", "--infra local or --infra slurm"),
    "t-streaming_logs.yaml": None,
    "t-test_concurrent_file_mounts.yaml": None,
    "t-test_custom_image.yaml": ("resources.cloud", "--infra local or --infra slurm"),
    "t-test_labels.yaml": None,
    "t-test_list_null_accelerators.yaml": ("resources.accelerators", "has no NVIDIA GPU"),
    "t-test_list_of_dicts_accelerators.yaml": ("resources.accelerators", "has no NVIDIA GPU"),
    "t-test_long_setup.yaml": None,
    "t-test_managed_jobs_retry.yaml": None,
    "t-test_mixed_list_accelerators.yaml": ("resources.accelerators", "has no NVIDIA GPU"),
    "t-test_multiple_accelerators_ordered.yaml": ("resources.accelerators", "no NVIDIA GPU"),
    "t-test_multiple_accelerators_unordered_with_default.yaml": (
        "resources.any_of[0].cloud",
        "--infra local or --infra slurm",
    ),
    "t-test_only_setup.yaml": None,
}
# Refused only for the GPU: with the GPU present (SKY_MINI_GPUS) they are accepted.
NEED_GPU = {
    "e-huggingface_glue_imdb_app.yaml": "V100:1",
    "t-test_list_null_accelerators.yaml": "V100:1",
    "t-test_list_of_dicts_accelerators.yaml": "L4:1",
    "t-test_mixed_list_accelerators.yaml": "A100:1",
    "t-test_multiple_accelerators_ordered.yaml": "K80:1",
}
# Refused only for where they run: `--infra local` overrides the file and they run here.
PLACEMENT_ONLY = [
    "e-minimal.yaml",
    "e-docker-ping.yaml",
    "e-autogluon.yaml",
    "e-disk_size.yaml",
    "t-pipeline_aws.yaml",
    "t-pipeline.yaml",
    "t-orphan_reap_sigkill.yaml",
]


@pytest.fixture
def corpus_sky(sky: SkyMini, tmp_path: Path) -> SkyMini:
    """A home whose HOME has the files SkyPilot's smoke tests create for file_mounts."""
    user_home = tmp_path / "user"
    (user_home / "tmp-workdir").mkdir(parents=True)
    (user_home / "tmp-workdir" / "foo").write_text("foo\n")
    (user_home / "tmpfile").write_text("tmp\n")
    sky.extra_env.update(MACHINE)
    sky.extra_env["HOME"] = str(user_home)
    return sky


def test_corpus_is_complete_and_documented() -> None:
    files = sorted(p.name for p in CORPUS.glob("*.yaml"))
    assert files == sorted(EXPECTED) and len(files) >= 30
    readme = (CORPUS / "README.md").read_text()
    for name in files:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_outcome(corpus_sky: SkyMini, name: str) -> None:
    result = corpus_sky.run("jobs", "launch", "--dry-run", str(CORPUS / name))
    expected = EXPECTED[name]
    assert "Traceback" not in result.err
    if expected is None:
        assert result.code == 0, result
        assert "Dry run: nothing was recorded" in result.out
    else:
        key, words = expected
        assert result.code == 2, result
        assert f"key '{key}'" in result.err and words in result.err, result.err
    assert not os.path.exists(corpus_sky.home)


@pytest.mark.parametrize("name", sorted(NEED_GPU))
def test_gpu_files_pass_where_the_gpu_exists(corpus_sky: SkyMini, name: str) -> None:
    corpus_sky.extra_env["SKY_MINI_GPUS"] = NEED_GPU[name]
    result = corpus_sky.run("jobs", "launch", "--dry-run", str(CORPUS / name))
    assert result.code == 0, result
    assert f"1 x {NEED_GPU[name].split(':')[0]}" in result.out


@pytest.mark.parametrize("name", PLACEMENT_ONLY)
def test_infra_local_overrides_the_cloud(corpus_sky: SkyMini, name: str) -> None:
    result = corpus_sky.run("jobs", "launch", "--dry-run", "--infra", "local", str(CORPUS / name))
    assert result.code == 0, result
    assert "infra:       local" in result.out
    assert "overridden by --infra" in result.err


def test_multi_node_files_pass_for_slurm(corpus_sky: SkyMini) -> None:
    for name in ("e-job_queue-job_multinode.yaml", "t-failed_run_pipeline.yaml"):
        result = corpus_sky.run(
            "jobs", "launch", "--dry-run", "--infra", "slurm", str(CORPUS / name)
        )
        assert result.code == 0, result
        assert "infra:       slurm" in result.out and "num_nodes:   2" in result.out


def test_a_handful_really_run(corpus_sky: SkyMini) -> None:
    """A pipeline, a setup-only task, a long line, a failing setup, and a chain that stops."""
    corpus_sky.serve_foreground()

    def launch(name: str) -> list[int]:
        out = corpus_sky.run("jobs", "launch", "--async", str(CORPUS / name), check=True).out
        return [int(x) for x in out.split()]

    chain = launch("e-chain_dag-2_jobs.yaml")
    only_setup = launch("t-test_only_setup.yaml")
    long_line = launch("t-long_log_line.yaml")
    ranks = launch("t-multi_node_sleep.yaml")
    failed_setup = launch("t-failed_setup.yaml")
    retry = launch("t-test_managed_jobs_retry.yaml")
    every = chain + only_setup + long_line + ranks + failed_setup + retry
    corpus_sky.run("jobs", "wait", *map(str, every), timeout=180)
    status = {j: corpus_sky.job(j)["status"] for j in every}
    for job in chain + only_setup + long_line + ranks:
        assert status[job] == "SUCCEEDED", (job, corpus_sky.job(job))
    assert status[failed_setup[0]] == "FAILED_SETUP"
    assert [status[j] for j in retry] == ["FAILED", "CANCELLED"]
    assert corpus_sky.job(retry[1])["reason_code"] == "dependency_failed"
    logs = corpus_sky.run("jobs", "logs", str(chain[1]), "--no-follow", check=True).out
    assert logs == "setup for task 2\nrun for task 2\n"
    line = corpus_sky.run("jobs", "logs", str(long_line[0]), "--no-follow", check=True).out
    assert line.splitlines() == ["LONG_LOG_LINE_START", "x" * 300000, "LONG_LOG_LINE_END"]
    assert "done" in corpus_sky.run("jobs", "logs", str(ranks[0]), "--no-follow").out
