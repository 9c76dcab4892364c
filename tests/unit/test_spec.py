"""Tests for sky_mini.spec: loading and validating task and service YAML."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sky_mini import spec
from sky_mini.errors import EXIT_USAGE, SpecError, UsageError
from sky_mini.spec import (
    ReadinessProbe,
    ResourceSpec,
    ServiceSpec,
    TaskSpec,
    apply_overrides,
    check_fits,
    effective_cpus,
    load_service,
    load_task,
    parse_env_assignments,
    task_from_command,
    yamlio,
)

MiB = 1024 * 1024
GiB = 1024 * MiB


def write(directory: Path, text: str, name: str = "task.yaml") -> str:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def task_error(tmp_path: Path, text: str) -> SpecError:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_task(path)
    assert info.value.path == path
    assert path in str(info.value)
    return info.value


def service_error(tmp_path: Path, text: str) -> SpecError:
    path = write(tmp_path, text, "service.yaml")
    with pytest.raises(SpecError) as info:
        load_service(path)
    assert path in str(info.value)
    return info.value


@pytest.fixture(params=["default", "pure-python"], autouse=True)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run every test with the libyaml loader (when built) and with the pure-Python one."""
    if request.param == "pure-python":
        monkeypatch.setattr(yamlio, "_LOADER", yamlio._make_loader(yaml.SafeLoader))
    yield request.param


# --------------------------------------------------------------------------- tasks: happy


def test_minimal_task_takes_defaults(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, "run: echo hi\n"))
    assert task == TaskSpec(run="echo hi")
    assert task.resources == ResourceSpec(cpus=1.0, memory_bytes=None, timeout_seconds=None)
    assert task.name is None and task.setup is None and task.workdir is None
    assert task.envs == {}


def test_contract_example_loads(tmp_path: Path) -> None:
    text = """
name: nightly-etl          # optional
workdir: .
envs: {DATE: today}
setup: pip install -r requirements.txt
run: python etl.py --date $DATE
resources:
  cpus: 1
  memory: 512M
  timeout: 30m
"""
    task = load_task(write(tmp_path, text))
    assert task.name == "nightly-etl"
    assert task.workdir == str(tmp_path)
    assert task.envs == {"DATE": "today"}
    assert task.setup == "pip install -r requirements.txt"
    assert task.run == "python etl.py --date $DATE"
    assert task.resources == ResourceSpec(
        cpus=1.0, memory_bytes=512 * MiB, timeout_seconds=1800, cpus_defaulted=False
    )


def test_run_as_list_is_joined_with_newlines(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, "run:\n  - echo one\n  - echo two\nsetup: [a, b]\n"))
    assert task.run == "echo one\necho two"
    assert task.setup == "a\nb"


def test_null_optional_keys_take_defaults(tmp_path: Path) -> None:
    text = "run: x\nname:\nsetup:\nworkdir:\nenvs:\nresources:\n"
    assert load_task(write(tmp_path, text)) == TaskSpec(run="x")


def test_empty_setup_means_no_setup(tmp_path: Path) -> None:
    assert load_task(write(tmp_path, "run: x\nsetup: '  '\n")).setup is None


def test_utf8_bom_and_unicode_accepted(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_bytes("\ufeffname: café ☕\nrun: echo ünïcode\n".encode())
    task = load_task(str(path))
    assert task.name == "café ☕"
    assert task.run == "echo ünïcode"


def test_anchors_and_aliases_within_limits_work(tmp_path: Path) -> None:
    text = "envs: {A: &v hello, B: *v}\nrun: echo ${A} ${B}\n"
    task = load_task(write(tmp_path, text))
    assert task.envs == {"A": "hello", "B": "hello"}
    assert task.run == "echo hello hello"


# --------------------------------------------------------------------------- envs


def test_env_values_are_stringified(tmp_path: Path) -> None:
    text = "run: x\nenvs:\n  I: 3\n  F: 1.5\n  T: true\n  N: false\n  S: ''\n  D: 2024-01-01\n"
    task = load_task(write(tmp_path, text))
    assert task.envs == {
        "I": "3",
        "F": "1.5",
        "T": "true",
        "N": "false",
        "S": "",
        "D": "2024-01-01",
    }


def test_dates_stay_strings_everywhere(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, "name: 2024-01-01\nrun: x\n"))
    assert task.name == "2024-01-01"


@pytest.mark.parametrize("name", ["1X", "A-B", "A B", "", "É"])
def test_bad_env_names_rejected(tmp_path: Path, name: str) -> None:
    err = task_error(tmp_path, f"run: x\nenvs: {{{json.dumps(name)}: v}}\n")
    assert err.key == "envs"
    assert "not a valid environment variable name" in err.problem
    assert "MY_VAR" in err.problem


def test_non_string_env_name_rejected(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\nenvs: {1: v}\n")
    assert err.key == "envs"


@pytest.mark.parametrize(("value", "found"), [("[1, 2]", "a list"), ("{a: b}", "a mapping")])
def test_non_scalar_env_values_rejected(tmp_path: Path, value: str, found: str) -> None:
    err = task_error(tmp_path, f"run: x\nenvs: {{A: {value}}}\n")
    assert err.key == "envs.A"
    assert found in err.problem
    assert "string, number or boolean" in err.problem


def test_envs_must_be_a_mapping(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\nenvs: [A=1]\n")
    assert err.key == "envs"
    assert "mapping" in err.problem and "a list" in err.problem


def test_nul_in_env_value_rejected(tmp_path: Path) -> None:
    err = task_error(tmp_path, 'run: x\nenvs: {A: "a\\0b"}\n')
    assert err.key == "envs.A"
    assert "NUL" in err.problem


# --------------------------------------------------------------------------- ${VAR}


def test_braced_vars_expanded_from_envs_in_run_and_setup(tmp_path: Path) -> None:
    text = (
        "envs: {DATE: today, N: 3}\n"
        "setup: echo ${DATE}\n"
        "run: etl --date ${DATE} -n ${N} $DATE ${UNKNOWN} $${DATE}x\n"
    )
    task = load_task(write(tmp_path, text))
    assert task.setup == "echo today"
    assert task.run == "etl --date today -n 3 $DATE ${UNKNOWN} $todayx"


def test_expansion_is_not_recursive(tmp_path: Path) -> None:
    text = "envs: {A: '${B}', B: b}\nrun: echo ${A}\n"
    assert load_task(write(tmp_path, text)).run == "echo ${B}"


def test_no_expansion_in_name_or_env_values(tmp_path: Path) -> None:
    text = "name: n-${A}\nenvs: {A: a, B: '${A}'}\nrun: x\n"
    task = load_task(write(tmp_path, text))
    assert task.name == "n-${A}"
    assert task.envs["B"] == "${A}"


# --------------------------------------------------------------------------- keys


def test_unknown_key_suggests_closest_and_lists_allowed(tmp_path: Path) -> None:
    err = task_error(tmp_path, "rnu: echo hi\n")
    assert err.key == "rnu"
    assert "did you mean 'run'" in err.problem
    for key in spec.TASK_KEYS:
        assert key in err.problem


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\nzzz: {}\n")
    assert err.key == "zzz"
    assert "did you mean" not in err.problem
    assert "allowed keys here: " in err.problem
    assert "envs, event_callback, experimental, file_mounts" in err.problem


def test_unknown_resources_key_is_dotted(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\nresources: {cpu: 2}\n")
    assert err.key == "resources.cpu"
    assert "did you mean 'cpus'" in err.problem
    assert "accelerators, " in err.problem and "cpus, " in err.problem
    assert "job_recovery" in err.problem


def test_non_string_top_level_key_rejected(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\n1: y\n")
    assert err.key == "1"
    assert "unknown key" in err.problem


def test_duplicate_key_rejected_with_line(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: a\nname: n\nrun: b\n")
    assert "duplicate key 'run'" in err.problem
    assert "line 3" in err.problem


# --------------------------------------------------------------------------- run / setup / name


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("name: x\n", "missing"),
        ("run:\n", "missing"),
        ("run: ''\n", "empty"),
        ("run: '   '\n", "empty"),
        ("run: []\n", "empty"),
        ("run: 3\n", "an integer (3)"),
        ("run: true\n", "a boolean (true)"),
        ("run: {a: b}\n", "a mapping"),
    ],
)
def test_bad_run_rejected(tmp_path: Path, text: str, found: str) -> None:
    err = task_error(tmp_path, text)
    assert err.key == "run"
    assert found in err.problem
    assert "shell command" in err.problem


def test_run_list_with_non_string_item_names_index(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: [echo, 3]\n")
    assert err.key == "run[1]"
    assert "an integer (3)" in err.problem


def test_setup_wrong_type(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\nsetup: 1.5\n")
    assert err.key == "setup"


def test_nul_in_run_rejected(tmp_path: Path) -> None:
    err = task_error(tmp_path, 'run: "echo \\0"\n')
    assert err.key == "run"
    assert "NUL" in err.problem


@pytest.mark.parametrize(
    "value", ["123", "''", "'   '", json.dumps("x" * 101), '"a\\nb"', '"a\\tb"', "[a]"]
)
def test_bad_names_rejected(tmp_path: Path, value: str) -> None:
    err = task_error(tmp_path, f"run: x\nname: {value}\n")
    assert err.key == "name"
    assert "1 to 100 characters" in err.problem


def test_name_of_100_chars_accepted(tmp_path: Path) -> None:
    assert load_task(write(tmp_path, f"run: x\nname: {'n' * 100}\n")).name == "n" * 100


# --------------------------------------------------------------------------- workdir


def test_relative_workdir_resolved_against_yaml_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write(project, "workdir: src\nrun: x\n")
    monkeypatch.chdir(elsewhere)
    assert load_task(os.path.relpath(path)).workdir == str(project / "src")
    assert load_task(write(project, "workdir: ./src/..\nrun: x\n")).workdir == str(project)


def test_absolute_and_home_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "abs"
    target.mkdir()
    assert load_task(write(tmp_path, f"workdir: {target}\nrun: x\n")).workdir == str(target)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_task(write(tmp_path, "workdir: ~/abs\nrun: x\n")).workdir == str(target)


def test_missing_workdir_rejected_with_resolved_path(tmp_path: Path) -> None:
    err = task_error(tmp_path, "workdir: nope\nrun: x\n")
    assert err.key == "workdir"
    assert str(tmp_path / "nope") in err.problem
    assert "not an existing directory" in err.problem


def test_workdir_that_is_a_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    err = task_error(tmp_path, "workdir: file\nrun: x\n")
    assert err.key == "workdir"


@pytest.mark.parametrize("value", ["3", "[a]", "''", "true"])
def test_workdir_wrong_type(tmp_path: Path, value: str) -> None:
    err = task_error(tmp_path, f"workdir: {value}\nrun: x\n")
    assert err.key == "workdir"
    assert "directory path" in err.problem


# --------------------------------------------------------------------------- resources


@pytest.mark.parametrize(
    ("value", "expected"), [("2", 2.0), ("0.5", 0.5), ("'3'", 3.0), ("1e-3", 0.001)]
)
def test_cpus_accepted(tmp_path: Path, value: str, expected: float) -> None:
    task = load_task(write(tmp_path, f"run: x\nresources: {{cpus: {value}}}\n"))
    assert task.resources.cpus == expected


@pytest.mark.parametrize("value", ["true", "0", "-1", "abc", ".inf", ".nan", "[1]", "'4++'"])
def test_bad_cpus_rejected(tmp_path: Path, value: str) -> None:
    err = task_error(tmp_path, f"run: x\nresources: {{cpus: {value}}}\n")
    assert err.key == "resources.cpus"
    assert "a number greater than 0" in err.problem
    assert "found" in err.problem


def test_bool_cpus_message_says_boolean(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\nresources: {cpus: true}\n")
    assert "a boolean (true)" in err.problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512M", 512 * MiB),
        ("2G", 2 * GiB),
        ("1.5GiB", int(1.5 * GiB)),
        ("2GB", 2 * GiB),
        ("1.5Gi", int(1.5 * GiB)),
        ("8", 8 * GiB),
        ("8+", 8 * GiB),
        ("0.5", GiB // 2),
        ("512M+", 512 * MiB),
        ("'2x'", 2 * GiB),
    ],
)
def test_memory_accepted(tmp_path: Path, value: str, expected: int) -> None:
    task = load_task(write(tmp_path, f"run: x\nresources: {{memory: {value}}}\n"))
    assert task.resources.memory_bytes == expected


@pytest.mark.parametrize(
    "value", ["1M", "lots", "true", "-1G", "[1]", ".inf", "'" + "9" * 400 + "G'"]
)
def test_bad_memory_rejected(tmp_path: Path, value: str) -> None:
    err = task_error(tmp_path, f"run: x\nresources: {{memory: {value}}}\n")
    assert err.key == "resources.memory"
    assert "at least 4 MiB" in err.problem
    assert "512M" in err.problem


def test_bare_number_memory_is_gigabytes_as_in_skypilot(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, "run: x\nresources: {memory: 8}\n"))
    assert task.resources.memory_bytes == 8 * GiB


@pytest.mark.parametrize(
    ("value", "expected"), [("30m", 1800.0), ("90", 90.0), ("1.5", 1.5), ("2h", 7200.0)]
)
def test_timeout_accepted(tmp_path: Path, value: str, expected: float) -> None:
    task = load_task(write(tmp_path, f"run: x\nresources: {{timeout: {value}}}\n"))
    assert task.resources.timeout_seconds == expected


@pytest.mark.parametrize("value", ["0", "0s", "forever", "true", "-5", ".inf", "{a: 1}"])
def test_bad_timeout_rejected(tmp_path: Path, value: str) -> None:
    err = task_error(tmp_path, f"run: x\nresources: {{timeout: {value}}}\n")
    assert err.key == "resources.timeout"
    assert "duration greater than 0" in err.problem


def test_resources_must_be_a_mapping(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\nresources: 2\n")
    assert err.key == "resources"
    assert "an integer (2)" in err.problem


# --------------------------------------------------------------------------- the file


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(SpecError) as info:
        load_task(path)
    assert info.value.key is None
    assert str(info.value) == f"{path}: no such file; check the path"
    assert info.value.exit_code == EXIT_USAGE
    assert isinstance(info.value, UsageError)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a regular file"):
        load_task(str(tmp_path))


def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="not a regular file"):
        load_task(str(fifo))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "run: x\n")
    os.chmod(path, 0)
    with pytest.raises(SpecError, match="permissions"):
        load_task(path)


def test_open_failure_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path, "run: x\n")
    monkeypatch.setattr(yamlio, "open", refuse, raising=False)
    with pytest.raises(SpecError, match="Permission denied.*permissions"):
        load_task(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_bytes(b"run: caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8 .*offset 8.*save it as UTF-8"):
        load_task(str(path))


def test_too_large(tmp_path: Path) -> None:
    path = write(tmp_path, "run: x\n" + "# padding\n" * 120_000)
    with pytest.raises(SpecError, match="larger than the 1 MiB"):
        load_task(path)


def test_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    err = task_error(tmp_path, "name: x\nrun: [unclosed\nsetup: y\n")
    assert "invalid YAML at line" in err.problem
    assert "column" in err.problem


def test_bad_indentation_syntax_error(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\n  name: y\n")
    assert "invalid YAML at line 2" in err.problem


def test_undefined_alias(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: *nothing\n")
    assert "alias *nothing at line 1, column 6 is not defined" in err.problem


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n", "---\n", "null\n"])
def test_empty_documents_rejected(tmp_path: Path, text: str) -> None:
    err = task_error(tmp_path, text)
    assert "empty" in err.problem


@pytest.mark.parametrize(
    ("text", "found"),
    [("- run: x\n", "a list"), ("echo hi\n", "the string 'echo hi'"), ("3\n", "integer")],
)
def test_top_level_must_be_mapping(tmp_path: Path, text: str, found: str) -> None:
    err = task_error(tmp_path, text)
    assert "top level must be a mapping" in err.problem
    assert found in err.problem


def test_multiple_documents_rejected_where_one_task_is_expected(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: a\n---\nrun: b\n")
    assert "holds 2 tasks; expected one" in err.problem


# --------------------------------------------------------------------------- hostile YAML


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system",
        "!!python/object/new:os.system",
        "!!python/name:os.system",
        "!!python/object:os.system",
    ],
)
def test_python_tags_rejected_without_executing(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "PWNED"
    text = f"run: {tag} [touch {marker}]\n"
    if tag.startswith("!!python/name"):
        text = f"run: {tag} ''\n"
    err = task_error(tmp_path, text)
    assert "invalid YAML at line 1" in err.problem
    assert "constructor" in err.problem
    assert not marker.exists()


def test_top_level_python_object_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    err = task_error(tmp_path, f"!!python/object/apply:os.system ['touch {marker}']\n")
    assert "python/object/apply:os.system" in err.problem
    assert not marker.exists()


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["run: x", "envs:", "  A: &l0 lol"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"  L{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_rejected_quickly(tmp_path: Path) -> None:
    start = time.monotonic()
    err = task_error(tmp_path, billion_laughs())  # 81 aliases, 9**9 expanded values
    assert "expands to more than" in err.problem
    assert time.monotonic() - start < 10  # generous: the real cost is milliseconds


def test_too_many_aliases_rejected(tmp_path: Path) -> None:
    items = "\n".join(f"  - *a{i % 5}" for i in range(spec.MAX_ALIASES + 1))
    anchors = "\n".join(f"  - &a{i} x" for i in range(5))
    err = task_error(tmp_path, f"run: x\nname:\n{anchors}\n{items}\n")
    assert f"more than {spec.MAX_ALIASES} aliases" in err.problem


def test_recursive_alias_rejected(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: &a [*a]\n")
    assert "refers to itself" in err.problem


def test_deep_nesting_rejected(tmp_path: Path) -> None:
    depth = 10_000
    err = task_error(tmp_path, "run: " + "[" * depth + "]" * depth + "\n")
    assert "nested more than" in err.problem


def test_huge_integer_rejected_cleanly(tmp_path: Path) -> None:
    err = task_error(tmp_path, "run: x\nenvs: {A: " + "9" * 5000 + "}\n")
    assert "cannot be read" in err.problem


# --------------------------------------------------------------------------- hypothesis


def _load_or_spec_error(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        result = load_task(str(path))
    except SpecError:
        return
    assert isinstance(result, TaskSpec)
    json.dumps(result.to_json())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(
        alphabet=st.sampled_from(list("run:setup envs-[]{}&*!|>'\"#\n\t ,?%@`\\$0123.xyz\x00\x85"))
        | st.characters(),
        max_size=200,
    )
)
def test_random_text_gives_taskspec_or_specerror(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    _load_or_spec_error(tmp_path_factory.getbasetemp() / "fuzz-text.yaml", text)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["512M", "30m", ".", "0", "${A}", "A=1", "true"])
)
_keys = st.sampled_from([*spec.TASK_KEYS, *spec.RESOURCE_KEYS, "A", "PATH", "1X"]) | st.text(
    max_size=8
)
_nested = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(_keys, _nested, max_size=6) | _nested)
def test_random_structures_give_taskspec_or_specerror(
    tmp_path_factory: pytest.TempPathFactory, data: Any
) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    _load_or_spec_error(tmp_path_factory.getbasetemp() / "fuzz-struct.yaml", text)


@settings(max_examples=100, deadline=None)
@given(
    run=st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and "\0" not in s),
    envs=st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
        st.text(max_size=10).filter(lambda s: "\0" not in s),
        max_size=4,
    ),
)
def test_valid_tasks_round_trip(
    tmp_path_factory: pytest.TempPathFactory, run: str, envs: dict[str, str]
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-valid.yaml"
    path.write_text(yaml.safe_dump({"run": run, "envs": envs}), encoding="utf-8")
    try:
        task = load_task(str(path))
    except SpecError as exc:  # surrogates and the like are rejected; nothing else
        assert "not valid Unicode" in exc.problem
        return
    assert task.envs == envs
    assert TaskSpec.from_json(json.loads(json.dumps(task.to_json()))) == task


# --------------------------------------------------------------------------- CLI helpers


def test_task_from_command(tmp_path: Path) -> None:
    task = task_from_command(["echo", "a b", "${HOME}"], name="hi", cwd=str(tmp_path))
    assert task.run == shlex.join(["echo", "a b", "${HOME}"])
    assert task.run == "echo 'a b' '${HOME}'"
    assert task.name == "hi"
    assert task.workdir == str(tmp_path)
    assert task.envs == {} and task.resources == ResourceSpec()


def test_task_from_command_relative_cwd_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    task = task_from_command(["true"], name=None, cwd="sub")
    assert task.workdir == str(tmp_path / "sub")
    assert task.name is None


def test_task_from_command_rejects_empty_and_bad_name(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no command given"):
        task_from_command([], name=None, cwd=str(tmp_path))
    with pytest.raises(SpecError) as info:
        task_from_command(["true"], name="a\nb", cwd=str(tmp_path))
    assert info.value.key == "--name"
    with pytest.raises(SpecError, match="NUL"):
        task_from_command(["echo", "a\0b"], name=None, cwd=str(tmp_path))


def test_apply_overrides_replaces_fields(tmp_path: Path) -> None:
    base = load_task(write(tmp_path, "name: a\nrun: x\nresources: {cpus: 2, memory: 1G}\n"))
    out = apply_overrides(base, name="b", cpus="0.5", memory="2G", timeout="10m")
    assert out.name == "b"
    assert out.resources == ResourceSpec(
        cpus=0.5, memory_bytes=2 * GiB, timeout_seconds=600, cpus_defaulted=False
    )
    assert base.name == "a"  # the original is untouched
    assert apply_overrides(base, cpus=3.0).resources.memory_bytes == GiB


def test_apply_overrides_without_changes_returns_same_spec(tmp_path: Path) -> None:
    base = load_task(write(tmp_path, "run: x\n"))
    assert apply_overrides(base) is base
    assert apply_overrides(base, envs={}) is base


def test_apply_overrides_env_merges_and_reexpands(tmp_path: Path) -> None:
    text = "envs: {DATE: today, KEEP: k}\nsetup: s ${DATE}\nrun: r ${DATE} ${KEEP} ${NEW}\n"
    base = load_task(write(tmp_path, text))
    assert base.run == "r today k ${NEW}"
    out = apply_overrides(base, envs={"DATE": "yesterday", "NEW": "n"})
    assert out.envs == {"DATE": "yesterday", "KEEP": "k", "NEW": "n"}
    assert out.run == "r yesterday k n"
    assert out.setup == "s yesterday"


def test_apply_overrides_env_on_command_task_keeps_command_literal(tmp_path: Path) -> None:
    base = task_from_command(["echo", "${A}"], name=None, cwd=str(tmp_path))
    out = apply_overrides(base, envs={"A": "1"})
    assert out.run == base.run
    assert out.envs == {"A": "1"}


@pytest.mark.parametrize(
    ("kwargs", "key", "words"),
    [
        ({"cpus": "lots"}, "--cpus", "greater than 0"),
        ({"cpus": 0}, "--cpus", "greater than 0"),
        ({"memory": "1K"}, "--memory", "at least 4 MiB"),
        ({"memory": "big"}, "--memory", "512M"),
        ({"timeout": "soon"}, "--timeout", "30s"),
        ({"timeout": "0"}, "--timeout", "greater than 0"),
        ({"name": ""}, "--name", "1 to 100"),
        ({"envs": {"1A": "x"}}, "--env", "not a valid environment variable name"),
    ],
)
def test_apply_overrides_bad_values_name_the_flag(
    tmp_path: Path, kwargs: dict[str, Any], key: str, words: str
) -> None:
    base = load_task(write(tmp_path, "run: x\n"))
    with pytest.raises(SpecError) as info:
        apply_overrides(base, **kwargs)
    assert info.value.key == key
    assert info.value.path == "command line"
    assert words in info.value.problem


def test_apply_overrides_source_is_reported(tmp_path: Path) -> None:
    base = load_task(write(tmp_path, "run: x\n"))
    with pytest.raises(SpecError, match="^SKY_MINI_X: key '--memory'"):
        apply_overrides(base, memory="x", source="SKY_MINI_X")


def test_parse_env_assignments() -> None:
    pairs = ["A=1", "B=", "C=x=y", "A=2", "_u=ü"]
    assert parse_env_assignments(pairs) == {"A": "2", "B": "", "C": "x=y", "_u": "ü"}
    assert parse_env_assignments([]) == {}


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("NOEQUALS", "expected KEY=VALUE"),
        ("=v", "not a valid environment variable name"),
        ("1A=v", "not a valid environment variable name"),
        ("A B=v", "not a valid environment variable name"),
        ("A=a\0b", "NUL"),
    ],
)
def test_parse_env_assignments_rejects(item: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_env_assignments(["OK=1", item])
    assert repr(item) in str(info.value)
    assert words in str(info.value)
    assert info.value.exit_code == EXIT_USAGE


# --------------------------------------------------------------------------- check_fits


def test_check_fits_accepts_what_fits() -> None:
    check_fits(
        ResourceSpec(cpus=2, memory_bytes=2 * GiB),
        machine_cpus=2,
        machine_memory_bytes=2 * GiB,
        path="t.yaml",
    )
    check_fits(ResourceSpec(), machine_cpus=1, machine_memory_bytes=GiB, path="t.yaml")


def test_check_fits_rejects_too_much_memory() -> None:
    with pytest.raises(SpecError) as info:
        check_fits(
            ResourceSpec(memory_bytes=64 * GiB),
            machine_cpus=4,
            machine_memory_bytes=2 * GiB,
            path="t.yaml",
        )
    assert info.value.key == "resources.memory"
    assert str(info.value) == (
        "t.yaml: key 'resources.memory': 64.0 GiB is more than this machine can ever give "
        "(2.0 GiB); lower it or set SKY_MINI_MEMORY"
    )


def test_check_fits_rejects_too_many_cpus() -> None:
    with pytest.raises(SpecError) as info:
        check_fits(
            ResourceSpec(cpus=8, cpus_defaulted=False),
            machine_cpus=1.5,
            machine_memory_bytes=GiB,
            path="t.yaml",
        )
    assert info.value.key == "resources.cpus"
    assert "8 CPUs" in info.value.problem and "(1.5 CPU)" in info.value.problem
    assert "SKY_MINI_CPUS" in info.value.problem


# --------------------------------------------------------------------------- json


def test_resource_and_task_json_round_trip(tmp_path: Path) -> None:
    task = load_task(
        write(
            tmp_path,
            "name: n\nworkdir: .\nenvs: {A: 1}\nsetup: s\nrun: r\n"
            "resources: {cpus: 0.5, memory: 1G, timeout: 5m}\n",
        )
    )
    data = json.loads(json.dumps(task.to_json()))
    assert data == {
        "name": "n",
        "run": "r",
        "setup": "s",
        "workdir": str(tmp_path),
        "envs": {"A": "1"},
        "resources": {
            "cpus": 0.5,
            "cpus_defaulted": False,
            "memory_bytes": GiB,
            "timeout_seconds": 300.0,
        },
    }
    assert TaskSpec.from_json(data) == task
    assert ResourceSpec.from_json(data["resources"]) == task.resources


def test_from_json_fills_defaults_for_missing_keys() -> None:
    assert TaskSpec.from_json({"run": "x"}) == TaskSpec(run="x")
    assert ResourceSpec.from_json({}) == ResourceSpec()
    assert ServiceSpec.from_json({"name": "s", "run": "x"}) == ServiceSpec(name="s", run="x")


def test_service_json_round_trip(tmp_path: Path) -> None:
    for probe in (None, ReadinessProbe("/health", 1.5, 2.0)):
        svc = ServiceSpec(
            name="api",
            run="serve --port $PORT",
            replicas=3,
            port=8080,
            readiness_probe=probe,
            resources=ResourceSpec(cpus=0.5, memory_bytes=64 * MiB, timeout_seconds=None),
            envs={"A": "1"},
            workdir=str(tmp_path),
            setup="make",
        )
        data = json.loads(json.dumps(svc.to_json()))
        assert ServiceSpec.from_json(data) == svc


# --------------------------------------------------------------------------- services


def test_minimal_service(tmp_path: Path) -> None:
    svc = load_service(write(tmp_path, "name: api\nrun: serve --port $PORT\n", "service.yaml"))
    assert svc == ServiceSpec(name="api", run="serve --port $PORT")
    assert svc.replicas == 1 and svc.port is None and svc.readiness_probe is None


def test_full_service(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    text = """
name: my-api-2
run: python -m http.server $PORT --bind ${HOST}
setup: echo ${HOST}
replicas: 3
port: 8080
readiness_probe:
  path: /health
  initial_delay_seconds: 5
  timeout_seconds: 2s
resources: {cpus: 0.5, memory: 256M}
envs: {HOST: 127.0.0.1}
workdir: app
"""
    svc = load_service(write(tmp_path, text, "service.yaml"))
    assert svc == ServiceSpec(
        name="my-api-2",
        run="python -m http.server $PORT --bind 127.0.0.1",
        setup="echo 127.0.0.1",
        replicas=3,
        port=8080,
        readiness_probe=ReadinessProbe("/health", 5.0, 2.0),
        resources=ResourceSpec(cpus=0.5, memory_bytes=256 * MiB, cpus_defaulted=False),
        envs={"HOST": "127.0.0.1"},
        workdir=str(tmp_path / "app"),
    )


def test_probe_as_plain_string_and_partial_mapping(tmp_path: Path) -> None:
    svc = load_service(write(tmp_path, "name: a\nrun: x\nreadiness_probe: /ok\n", "s.yaml"))
    assert svc.readiness_probe == ReadinessProbe(path="/ok")
    svc = load_service(
        write(tmp_path, "name: a\nrun: x\nreadiness_probe: {timeout_seconds: 1}\n", "s.yaml")
    )
    assert svc.readiness_probe == ReadinessProbe(path="/", timeout_seconds=1.0)


@pytest.mark.parametrize(
    "value", ["My-Api", "my_api", "-api", "a" * 64, "''", "3", "'a b'", "'api\\n'", "é"]
)
def test_bad_service_names(tmp_path: Path, value: str) -> None:
    err = service_error(tmp_path, f"name: {value}\nrun: x\n")
    assert err.key == "name"
    assert "lowercase letters, digits and dashes" in err.problem


def test_service_name_edge_cases_accepted(tmp_path: Path) -> None:
    for name in ("a", "0", "a" * 63, "a-", "9-lives"):
        assert load_service(write(tmp_path, f"name: '{name}'\nrun: x\n", "s.yaml")).name == name


def test_service_requires_name_and_run(tmp_path: Path) -> None:
    assert service_error(tmp_path, "run: x\n").key == "name"
    err = service_error(tmp_path, "name: a\n")
    assert err.key == "run" and "missing" in err.problem


@pytest.mark.parametrize("value", ["0", "65", "true", "'2'", "1.5", "-1"])
def test_bad_replicas(tmp_path: Path, value: str) -> None:
    err = service_error(tmp_path, f"name: a\nrun: x\nreplicas: {value}\n")
    assert err.key == "replicas"
    assert "whole number from 1 to 64" in err.problem


@pytest.mark.parametrize("value", ["0", "65536", "true", "'80'", "80.0"])
def test_bad_port(tmp_path: Path, value: str) -> None:
    err = service_error(tmp_path, f"name: a\nrun: x\nport: {value}\n")
    assert err.key == "port"
    assert "whole number from 1 to 65535" in err.problem


def test_port_and_replicas_bounds_accepted(tmp_path: Path) -> None:
    svc = load_service(write(tmp_path, "name: a\nrun: x\nport: 65535\nreplicas: 64\n", "s.yaml"))
    assert (svc.port, svc.replicas) == (65535, 64)


@pytest.mark.parametrize(
    ("probe", "key"),
    [
        ("health", "readiness_probe"),
        ("{path: health}", "readiness_probe.path"),
        ("{path: '/a b'}", "readiness_probe.path"),
        ("{path: 3}", "readiness_probe.path"),
        ("{timeout_seconds: 0}", "readiness_probe.timeout_seconds"),
        ("{initial_delay_seconds: -1}", "readiness_probe.initial_delay_seconds"),
        ("{initial_delay_seconds: true}", "readiness_probe.initial_delay_seconds"),
        ("[/]", "readiness_probe"),
    ],
)
def test_bad_probe(tmp_path: Path, probe: str, key: str) -> None:
    err = service_error(tmp_path, f"name: a\nrun: x\nreadiness_probe: {probe}\n")
    assert err.key == key


def test_unknown_probe_key(tmp_path: Path) -> None:
    err = service_error(tmp_path, "name: a\nrun: x\nreadiness_probe: {pth: /}\n")
    assert err.key == "readiness_probe.pth"
    assert "did you mean 'path'" in err.problem
    assert "initial_delay_seconds, path, timeout_seconds" in err.problem


def test_unknown_service_key(tmp_path: Path) -> None:
    err = service_error(tmp_path, "name: a\nrun: x\nreplica: 2\n")
    assert err.key == "replica"
    assert "did you mean 'replicas'" in err.problem
    for key in spec.SERVICE_KEYS:
        assert key in err.problem


def test_service_envs_may_not_set_port(tmp_path: Path) -> None:
    err = service_error(tmp_path, "name: a\nrun: x\nenvs: {PORT: 1}\n")
    assert err.key == "envs.PORT"


def test_service_shares_file_checks(tmp_path: Path) -> None:
    err = service_error(tmp_path, "name: a\nrun: x\n---\nname: b\n")
    assert "more than one YAML document" in err.problem
    err = service_error(tmp_path, "name: a\nrun: x\nresources: {memory: 1K}\n")
    assert err.key == "resources.memory"


def test_default_cpus_fit_a_half_cpu_box_but_an_explicit_request_does_not(
    tmp_path: Path,
) -> None:
    default = load_task(write(tmp_path, "run: x\n")).resources
    assert default.cpus_defaulted
    check_fits(default, machine_cpus=0.5, machine_memory_bytes=GiB, path="t.yaml")
    explicit = load_task(write(tmp_path, "run: x\nresources: {cpus: 1}\n")).resources
    assert not explicit.cpus_defaulted
    with pytest.raises(SpecError) as err:
        check_fits(explicit, machine_cpus=0.5, machine_memory_bytes=GiB, path="t.yaml")
    assert err.value.key == "resources.cpus" and "(0.5 CPU)" in err.value.problem
    by_flag = apply_overrides(load_task(write(tmp_path, "run: x\n")), cpus="1").resources
    with pytest.raises(SpecError):
        check_fits(by_flag, machine_cpus=0.5, machine_memory_bytes=GiB, path="t.yaml")
    assert effective_cpus(1.0, True, 0.5) == 0.5 and effective_cpus(1.0, True, 4) == 1.0
    # Old records (no key) are explicit requests: never silently shrunk.
    assert not ResourceSpec.from_json({"cpus": 1.0}).cpus_defaulted


def test_a_service_with_default_cpus_fits_a_half_cpu_box(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text("name: web\nrun: python -m http.server $PORT\nreplicas: 2\n")
    service = load_service(str(path))
    check_fits(service.resources, machine_cpus=0.5, machine_memory_bytes=GiB, path=str(path))
    path.write_text("name: web\nrun: x\nresources: {cpus: 1}\n")
    with pytest.raises(SpecError):
        check_fits(
            load_service(str(path)).resources,
            machine_cpus=0.5,
            machine_memory_bytes=GiB,
            path=str(path),
        )


@pytest.mark.parametrize("value", ["local", "slurm", "slurm/debug"])
def test_resources_infra_accepted(tmp_path: Path, value: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(f"run: x\nresources: {{infra: {value}}}\n")
    assert spec.load_task(str(path)).resources.infra == value


@pytest.mark.parametrize("value", ["kubernetes", "aws/us-east-1", "local/x", "5"])
def test_resources_infra_rejected_names_key_and_flag(tmp_path: Path, value: str) -> None:
    err = task_error(tmp_path, f"run: x\nresources: {{infra: {value}}}\n")
    assert err.key == "resources.infra"
