"""Submit-time fit against a Slurm partition: sinfo parsing (GRES shapes, the default
partition) and the refusal for each key, from fixture text."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sky_mini.errors import SpecError
from sky_mini.server.backends.slurm.capacity import (
    PartitionCheck,
    check_fits_partition,
    parse_gres,
    parse_sinfo,
)
from sky_mini.spec import task_from_command

SINFO = (
    "cpu1|debug*|2|4096|(null)\n"
    "cpu2|debug*|4|2048|(null)\n"
    "gpu1|gpu|8|64000|gpu:a100:2(S:0-1),gpu:t4:1\n"
    "gpu2|gpu|8|64000|gpu:a100:4(S:0,1)\n"
    "junk line\n"
)


def task(**resources: object) -> object:
    base = task_from_command(["true"], name=None, cwd="/")
    num_nodes = int(resources.pop("num_nodes", 1))  # type: ignore[call-overload]
    return replace(base, resources=replace(base.resources, **resources), num_nodes=num_nodes)


def test_parse_gres_shapes() -> None:
    assert parse_gres("(null)") == {}
    assert parse_gres("gpu:2") == {"": 2}
    assert parse_gres("gpu:A100:2(S:0-1),gpu:t4:1,shard:8") == {"a100": 2, "t4": 1}
    assert parse_gres("gpu") == {"": 1}


def test_parse_sinfo_partitions_and_default() -> None:
    cluster = parse_sinfo(SINFO)
    assert cluster.default == "debug"
    assert [n.name for n in cluster.partitions["debug"]] == ["cpu1", "cpu2"]
    assert cluster.partitions["gpu"][1].gpus == {"a100": 4}


@pytest.mark.parametrize(
    ("resources", "key", "figure"),
    [
        ({"cpus": 5.0, "cpus_defaulted": False}, "resources.cpus", "at most 4"),
        ({"memory_bytes": 5 * 1024**3}, "resources.memory", "at most 4096 MB"),
        ({"gpus": 1.0, "accelerator": "A100"}, "resources.accelerators", "at most 0"),
        ({"num_nodes": 3}, "num_nodes", "2 nodes"),
        # each node alone fits, but only one has 4 CPUs
        ({"cpus": 4.0, "cpus_defaulted": False, "num_nodes": 2}, "num_nodes", "1 of its 2"),
    ],
)
def test_refusals_name_the_key_and_the_figure(
    resources: dict[str, object], key: str, figure: str
) -> None:
    nodes = parse_sinfo(SINFO).partitions["debug"]
    with pytest.raises(SpecError) as info:
        check_fits_partition(task(**resources), "t.yaml", "debug", nodes)
    assert info.value.key == key and figure in info.value.problem, info.value


def test_what_fits_passes() -> None:
    gpu = parse_sinfo(SINFO).partitions["gpu"]
    check_fits_partition(task(gpus=4.0, accelerator="A100"), "t.yaml", "gpu", gpu)
    check_fits_partition(task(gpus=1.0, accelerator="T4"), "t.yaml", "gpu", gpu)
    check_fits_partition(task(gpus=3.0, num_nodes=2), "t.yaml", "gpu", gpu)  # any type: 3 and 4
    with pytest.raises(SpecError):
        check_fits_partition(task(gpus=2.0, accelerator="T4"), "t.yaml", "gpu", gpu)


def test_unknown_partition_and_unreachable_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    check = PartitionCheck(configured_partition=None)
    check.answer = parse_sinfo(SINFO)
    with pytest.raises(SpecError) as info:
        check.check(task(), "t.yaml", "slurm/nope")
    assert info.value.key == "resources.infra" and "it has: debug, gpu" in info.value.problem
    check.check(task(), "t.yaml", "slurm")  # the default partition
    down = PartitionCheck(configured_partition="debug")
    down.answer = "sinfo: Unable to contact slurm controller"
    down.check(task(cpus=64.0), "t.yaml", "slurm")
    down.check(task(cpus=64.0), "t.yaml", "slurm")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "Unable to contact" in err
