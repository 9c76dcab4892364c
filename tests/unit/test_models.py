"""Classes whose ``__init__`` is written out instead of generated (docs/PERFORMANCE.md,
issue 16) keep it in step with their fields: same names, order and defaults."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from sky_mini.models import JobRecord, JobStatus, job_from_json
from sky_mini.spec import ResourceSpec, TaskSpec


def default_of(f: dataclasses.Field[object]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return None  # written-out __init__: None means "a fresh default"
    return inspect.Parameter.empty


@pytest.mark.parametrize("cls", [JobRecord, TaskSpec, ResourceSpec])
def test_init_parameters_match_the_fields(cls: type) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    assert [p.default for p in params] == [default_of(f) for f in fields]


def test_job_records_compare_copy_and_round_trip_as_the_dataclass_did() -> None:
    record = JobRecord(id=3, task={"run": "true"}, name="n", log_path="/l", submitted_at=1.0)
    assert record.cgroup_paths == [] and record.env == {} and record.after == []
    assert record.env is not JobRecord(1, {}, "m", "/m", 0.0).env
    again = job_from_json(record.to_json())
    assert again == record and again is not record
    again.status = JobStatus.RUNNING
    assert again != record
    assert dataclasses.replace(record, name="other").name == "other"
    assert repr(record).startswith("JobRecord(id=3, task={'run': 'true'}, name='n',")
    with pytest.raises(TypeError):
        hash(record)
