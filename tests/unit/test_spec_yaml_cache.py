"""The content-keyed cache of parsed task files (sky_mini.spec.yamlio): the same bytes are
not parsed twice, every check still runs, and nothing questionable is kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sky_mini.errors import SpecError
from sky_mini.spec import load_task_file, yamlio


class CountingLoader:
    """Counts how often a file is really parsed (the cache's whole point is fewer)."""

    parsed = 0


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingLoader]:
    CountingLoader.parsed = 0
    real = yamlio._check_events

    def check_events(text: str, path: str) -> int:
        CountingLoader.parsed += 1
        return real(text, path)

    monkeypatch.setattr(yamlio, "_check_events", check_events)
    return CountingLoader


def write(tmp_path: Path, text: str, name: str = "task.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def entries(cache: str) -> list[str]:
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def test_the_same_bytes_are_parsed_once(tmp_path: Path, counting: type[CountingLoader]) -> None:
    cache = str(tmp_path / "cache")
    path = write(tmp_path, "name: nightly\nrun: echo hi\nresources: {cpus: 2}\n")
    first = load_task_file(path, cache_dir=cache)
    second = load_task_file(path, cache_dir=cache)
    assert counting.parsed == 1
    assert first == second
    assert len(entries(cache)) == 1
    assert os.stat(os.path.join(cache, entries(cache)[0])).st_mode & 0o777 == 0o600
    # Changed bytes are parsed again (the negative control: the counter does count).
    write(tmp_path, "name: nightly\nrun: echo bye\nresources: {cpus: 2}\n")
    third = load_task_file(path, cache_dir=cache)
    assert counting.parsed == 2
    assert third.tasks[0].run == "echo bye"


def test_without_a_cache_dir_every_load_parses(
    tmp_path: Path, counting: type[CountingLoader]
) -> None:
    path = write(tmp_path, "run: echo hi\n")
    load_task_file(path)
    load_task_file(path)
    assert counting.parsed == 2


def test_a_cached_document_is_still_validated(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    path = write(tmp_path, "run: echo hi\n")
    load_task_file(path, cache_dir=cache)
    (entry,) = entries(cache)
    with open(os.path.join(cache, entry), "w") as handle:
        json.dump({"version": yamlio.CACHE_VERSION, "documents": [{"run": 1, "bogus": 2}]}, handle)
    with pytest.raises(SpecError) as info:
        load_task_file(path, cache_dir=cache)
    assert "bogus" in str(info.value)


def test_an_invalid_task_is_refused_the_same_way_from_the_cache(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    path = write(tmp_path, "run: echo hi\nresoruces: {cpus: 1}\n")
    messages = []
    for _ in range(2):
        with pytest.raises(SpecError) as info:
            load_task_file(path, cache_dir=cache)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "resoruces" in messages[0]


@pytest.mark.parametrize(
    "content", ["", "{", "[]", '{"version": 1}', '{"version": 1, "documents": []}']
)
def test_a_damaged_entry_is_ignored_and_rewritten(
    tmp_path: Path, counting: type[CountingLoader], content: str
) -> None:
    cache = str(tmp_path / "cache")
    path = write(tmp_path, "run: echo hi\n")
    load_task_file(path, cache_dir=cache)
    (entry,) = entries(cache)
    with open(os.path.join(cache, entry), "w") as handle:
        handle.write(content)
    assert load_task_file(path, cache_dir=cache).tasks[0].run == "echo hi"
    assert counting.parsed == 2
    with open(os.path.join(cache, entry)) as handle:
        assert json.load(handle)["documents"] == [{"run": "echo hi"}]


@pytest.mark.parametrize(
    "text",
    [
        "envs: {1: a}\nrun: x\n",  # an integer key would come back as "1"
        "run: x\nblob: !!binary aGVsbG8=\n",  # bytes have no JSON form
        "run: x\nratio: .nan\n",  # NaN is not equal to itself
    ],
)
def test_documents_json_cannot_give_back_exactly_are_not_kept(tmp_path: Path, text: str) -> None:
    cache = str(tmp_path / "cache")
    path = write(tmp_path, text)
    for _ in range(2):
        assert yamlio.load_documents(path, "a task", cache)[0]["run"] == "x"
    assert entries(cache) == []


def test_types_survive_the_round_trip(tmp_path: Path, counting: type[CountingLoader]) -> None:
    cache = str(tmp_path / "cache")
    text = "a: 1\nb: 1.0\nc: true\nd: null\ne: 2024-01-01\nf: [1, '1']\ng: {z: 1, a: 2}\n"
    path = write(tmp_path, text)
    parsed = yamlio.load_documents(path, "a task", cache)
    cached = yamlio.load_documents(path, "a task", cache)
    assert counting.parsed == 1
    assert [type(v) for v in cached[0].values()] == [type(v) for v in parsed[0].values()]
    assert list(cached[0]["g"]) == ["z", "a"]
    assert cached == parsed


def test_a_file_that_fails_the_checks_is_never_kept(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    path = write(tmp_path, "run: a\nrun: b\n")
    for _ in range(2):
        with pytest.raises(SpecError, match="duplicate key"):
            load_task_file(path, cache_dir=cache)
    assert entries(cache) == []


def test_the_cache_keeps_only_the_newest_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yamlio, "MAX_CACHE_ENTRIES", 3)
    cache = str(tmp_path / "cache")
    path = str(tmp_path / "task.yaml")
    for index in range(6):
        write(tmp_path, f"run: echo {index}\n")
        load_task_file(path, cache_dir=cache)
    assert len(entries(cache)) == 3


def test_a_file_with_secret_values_is_never_copied_into_the_cache(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    path = write(tmp_path, "run: echo $API_KEY\nsecrets: {API_KEY: s3cret-value}\n")
    load_task_file(path, cache_dir=cache)
    assert entries(cache) == []
    write(tmp_path, "run: echo $API_KEY\nsecrets: {API_KEY: null}\n")  # names only: kept
    load_task_file(path, cache_dir=cache)
    (entry,) = entries(cache)
    with open(os.path.join(cache, entry)) as handle:
        assert "API_KEY" in handle.read()
