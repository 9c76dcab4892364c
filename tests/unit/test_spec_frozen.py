"""The spec classes behave as the frozen dataclasses they were (sky_mini.spec.frozen)."""

from __future__ import annotations

import dataclasses

import pytest

from sky_mini.spec import ResourceSpec, TaskSpec


def test_equality_and_hash_follow_the_compared_fields() -> None:
    a = TaskSpec("echo hi", envs={"A": "1"}, secrets={"S": "x"}, ignored=("ports",))
    assert a == TaskSpec("echo hi", envs={"A": "1"})  # secrets/ignored: compare=False
    assert a != TaskSpec("echo bye", envs={"A": "1"})
    assert a != dataclasses.replace(a, resources=ResourceSpec(cpus=2))
    assert ResourceSpec(cpus=2) == ResourceSpec(cpus=2.0)
    assert hash(ResourceSpec(cpus=2)) == hash(ResourceSpec(cpus=2.0))
    assert ResourceSpec() != (1.0, None, None, None, None, 0.0, True)


def test_they_are_immutable() -> None:
    spec = TaskSpec("true")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.run = "false"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del spec.resources.cpus  # type: ignore[misc]


def test_defaults_are_fresh_and_dataclass_helpers_work() -> None:
    one, two = TaskSpec("true"), TaskSpec("true")
    assert one.envs == {} and one.envs is not two.envs
    assert one.resources == ResourceSpec()
    assert [f.name for f in dataclasses.fields(ResourceSpec)][:2] == ["cpus", "memory_bytes"]
    renamed = dataclasses.replace(one, name="nightly")
    assert (renamed.name, one.name) == ("nightly", None)
    assert dataclasses.asdict(ResourceSpec(cpus=3))["cpus"] == 3


def test_repr_leaves_out_what_the_dataclass_left_out() -> None:
    text = repr(TaskSpec("true", secrets={"TOKEN": "s3cret"}, run_template="x"))
    assert text.startswith("TaskSpec(run='true', name=None,")
    assert "s3cret" not in text and "run_template" not in text
