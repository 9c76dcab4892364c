"""SkyPilot's task keys in sky_mini.spec: resources forms, infra, accelerators, any_of,
envs/secrets, file_mounts, pipelines and job groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from sky_mini.errors import SpecError
from sky_mini.spec import Machine, ResourceSpec, TaskSpec, load_task, load_task_file, resolve
from sky_mini.spec.resources import parse_accelerators, parse_infra

GiB = 1024**3


def write(tmp_path: Path, text: str, name: str = "task.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error(tmp_path: Path, text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_task_file(write(tmp_path, text))
    return info.value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("A100", [("A100", 1.0)]),
        ("H100:8", [("H100", 8.0)]),
        ("T4:0.5", [("T4", 0.5)]),
        ({"V100": 2}, [("V100", 2.0)]),
        ("{A100:1, V100:1}", [("A100", 1.0), ("V100", 1.0)]),
        ({"A100:1": None, "T4:1": None}, [("A100", 1.0), ("T4", 1.0)]),
        (["A100-40GB:1", "T4:1"], [("A100-40GB", 1.0), ("T4", 1.0)]),
        ([{"T4": 1}, {"V100": None}, "L4:2"], [("T4", 1.0), ("V100", 1.0), ("L4", 2.0)]),
        (None, []),
    ],
)
def test_accelerator_forms(value: object, expected: list[tuple[str, float]]) -> None:
    assert parse_accelerators(value, "t.yaml", "resources.accelerators") == expected


@pytest.mark.parametrize("value", ["A100:-1", "A100:1.5", ":2", 3, "A 100"])
def test_bad_accelerators_name_the_key(value: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_accelerators(value, "t.yaml", "resources.accelerators")
    assert info.value.key is not None and info.value.key.startswith("resources.accelerators")


@pytest.mark.parametrize("value", ["local", "slurm", "slurm/gpu-part"])
def test_infra_accepted(value: str) -> None:
    assert parse_infra(value, "t.yaml", "resources.infra") == value


@pytest.mark.parametrize("value", ["aws", "gcp/us-central1", "kubernetes", "k8s/ctx", "*", "moon"])
def test_infra_refused_with_the_hint(value: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_infra(value, "t.yaml", "resources.infra")
    assert "use --infra local or --infra slurm" in info.value.problem


def test_cpus_memory_forms_and_ignored_keys(tmp_path: Path) -> None:
    task = load_task(
        write(
            tmp_path,
            "run: x\nresources: {cpus: 2+, memory: 4x, use_spot: true, ports: 8080,"
            " labels: {a: b}, timeout: 30m, job_recovery: {max_restarts_on_errors: 2}}\n",
        )
    )
    assert task.resources == ResourceSpec(
        cpus=2.0, memory_bytes=8 * GiB, timeout_seconds=1800, cpus_defaulted=False
    )
    assert task.ignored == ("resources.use_spot", "resources.ports", "resources.labels")
    assert task.retries == 2


def test_any_of_candidates_merge_over_the_base_and_the_first_fit_wins(tmp_path: Path) -> None:
    task = load_task(
        write(
            tmp_path,
            "run: x\nresources:\n  memory: 2\n  ordered:\n    - {cpus: 16}\n"
            "    - {cpus: 2, accelerators: T4:1}\n    - {cpus: 1}\n",
        )
    )
    assert [(c.cpus, c.gpus, c.memory_bytes) for c in task.candidates] == [
        (16.0, 0.0, 2 * GiB),
        (2.0, 1.0, 2 * GiB),
        (1.0, 0.0, 2 * GiB),
    ]
    cpu_only = resolve(task, "t", Machine(cpus=4, memory_bytes=8 * GiB), "local")
    assert cpu_only.resources.cpus == 1.0 and cpu_only.resources.gpus == 0
    with_gpu = resolve(task, "t", Machine(cpus=4, memory_bytes=8 * GiB, gpus=("Tesla T4",)), "l")
    assert with_gpu.resources.accelerator == "T4"
    with pytest.raises(SpecError, match="more than this machine can ever give"):
        resolve(task, "t", Machine(cpus=0.5, memory_bytes=GiB), "local")


def test_num_nodes_needs_slurm(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, "run: x\nnum_nodes: 4\n"))
    with pytest.raises(SpecError, match="needs --infra slurm"):
        resolve(task, "t", Machine(cpus=2, memory_bytes=GiB), "local")
    assert resolve(task, "t", None, "slurm").num_nodes == 4


def test_envs_null_and_secrets_are_kept_apart_from_the_record(tmp_path: Path) -> None:
    task = load_task(
        write(
            tmp_path, "envs: {A: 1, B: null}\nsecrets: {K: v4lue-x, S: null}\nrun: echo ${A} ${K}\n"
        )
    )
    assert task.envs == {"A": "1"}
    assert task.required_envs == ("B", "secret:S")
    assert task.secrets == {"K": "v4lue-x"} and task.secret_names == ("K", "S")
    assert task.run == "echo 1 ${K}"  # a secret is never expanded into the command
    data = task.to_json()
    assert data["secrets"] == ["K", "S"] and "v4lue-x" not in str(data)
    assert TaskSpec.from_json(data).secret_names == ("K", "S")


def test_a_name_in_envs_and_secrets_is_refused(tmp_path: Path) -> None:
    err = error(tmp_path, "envs: {K: 1}\nsecrets: {K: null}\nrun: x\n")
    assert err.key == "secrets.K"


def test_file_mounts_resolved_and_buckets_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    task = load_task(
        write(tmp_path, "workdir: .\nenvs: {D: out}\nfile_mounts:\n  ${D}/in: ./data\nrun: x\n")
    )
    assert task.file_mounts == {str(tmp_path / "out" / "in"): str(tmp_path / "data")}
    for source in ("s3://b/k", "gs://b", "r2://b", "{source: s3://b, mode: MOUNT}"):
        err = error(tmp_path, f"file_mounts: {{/d: {source}}}\nrun: x\n")
        assert err.key == "file_mounts./d" and "bucket" in err.problem
    err = error(tmp_path, "file_mounts: {/d: ./missing}\nrun: x\n")
    assert "does not exist" in err.problem
    (tmp_path / "real").mkdir()
    err = error(tmp_path, f"file_mounts: {{{tmp_path / 'real'}: ./data}}\nrun: x\n")
    assert "never replaces a real file" in err.problem


def test_pipeline_header_and_documents(tmp_path: Path) -> None:
    loaded = load_task_file(write(tmp_path, "name: p\n---\nrun: a\n---\nname: two\nsetup: b\n"))
    assert loaded.pipeline == "p" and not loaded.parallel and loaded.first_document == 2
    assert [t.run for t in loaded.tasks] == ["a", None]
    group = load_task_file(
        write(tmp_path, "name: g\nexecution: parallel\n---\nrun: a\n---\nrun: b\n")
    )
    assert group.parallel and len(group.tasks) == 2
    plain = load_task_file(write(tmp_path, "run: a\n---\nrun: b\n"))
    assert plain.pipeline is None and len(plain.tasks) == 2
    err = error(tmp_path, "name: p\n---\nrun: a\n---\nrun: a\nbogus: 1\n")
    assert "(document 3)" in err.path and err.key == "bogus"
    err = error(tmp_path, "name: g\nexecution: parallel\nprimary_tasks: [a]\n---\nrun: a\n")
    assert err.key == "primary_tasks" and "not supported" in err.problem
    assert "no task" in error(tmp_path, "name: p\n---\n").problem


def test_old_records_load_without_the_new_keys() -> None:
    task = TaskSpec.from_json({"run": "x", "resources": {"cpus": 2, "memory_bytes": None}})
    assert task.num_nodes == 1 and task.secret_names == () and task.resources.infra is None
    assert task.to_json()["resources"] == {
        "cpus": 2.0,
        "cpus_defaulted": False,  # a recorded cpus was a request
        "memory_bytes": None,
        "timeout_seconds": None,
    }
