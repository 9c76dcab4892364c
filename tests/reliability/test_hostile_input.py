"""Hostile input: fuzzed task/service YAML and CLI arguments never crash, run code or record.

Volume goes through ``sky_mini.cli.run([...])`` in-process (it returns the exit code); a
handful of the nastiest inputs also go through the real CLI. Every rejected input must exit
2 (bad input), print no traceback, and change no state (no new record, next_id unchanged).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SkyMini
from tests.reliability.common import assert_no_traceback
from tests.reliability.conftest import report

TRIED = {"yaml": 0, "args": 0}
PWNED = "pwned-by-yaml"


def state_snapshot(home: str) -> tuple[list[str], bytes | None]:
    jobs = os.path.join(home, "jobs")
    names = sorted(os.listdir(jobs)) if os.path.isdir(jobs) else []
    try:
        with open(os.path.join(jobs, "next_id"), "rb") as handle:
            counter: bytes | None = handle.read()
    except FileNotFoundError:
        counter = None
    return [n for n in names if not n.startswith(".")], counter


@pytest.fixture
def home(sky: SkyMini, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[str]:
    monkeypatch.setenv("SKY_MINI_HOME", sky.home)
    monkeypatch.chdir(tmp_path)
    os.makedirs(sky.home, 0o700, exist_ok=True)
    yield sky.home
    assert not os.path.exists(os.path.join(str(tmp_path), PWNED))


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from sky_mini.cli import run

    code = run(argv)
    out, err = capsys.readouterr()
    return code, out, err


def check_rejected_or_valid(
    home: str, argv: list[str], capsys: pytest.CaptureFixture[str], *, may_succeed: bool
) -> int:
    before = state_snapshot(home)
    code, out, err = run_in_process(argv, capsys)
    assert_no_traceback(out + err)
    if code == 0 and may_succeed:
        return code
    assert code == 2, (argv, code, out, err)
    assert err.startswith(("sky-mini: error:", "Error:", "Usage:")), err
    assert state_snapshot(home) == before
    return code


# -- YAML ------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["1", "0.1", "512M", "-1", "1e9", "99999T", "30m", "abc", "\x00", "ß"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
TASK_KEYS = ["name", "workdir", "envs", "setup", "run", "resources", "bogus", "cpus"]
RESOURCE_KEYS = ["cpus", "memory", "timeout", "gpus"]
task_like = st.fixed_dictionaries(
    {},
    optional={
        **{k: values for k in TASK_KEYS},
        "resources": st.dictionaries(st.sampled_from(RESOURCE_KEYS), values, max_size=3) | values,
    },
)
SERVICE_KEYS = ["name", "run", "replicas", "port", "readiness_probe", "resources", "envs", "x"]
service_like = st.fixed_dictionaries({}, optional={k: values for k in SERVICE_KEYS})


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


HOSTILE_DOCUMENTS = {
    "python-apply": f"run: !!python/object/apply:os.system ['touch {PWNED}']\n",
    "python-apply-top": f"!!python/object/apply:os.system ['touch {PWNED}']\n",
    "python-new": f"run: !!python/object/new:subprocess.check_output [['touch', '{PWNED}']]\n",
    "python-name": "run: !!python/name:os.system\n",
    "billion-laughs": (
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
            f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
            f"*{chr(97 + i)}]\n"
            for i in range(8)
        )
        + "run: echo hi\n"
    ),
    "deep-nesting": "run: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep-mapping": "run: echo\nenvs: " + "{a: " * 200 + "1" + "}" * 200 + "\n",
    "huge-file": "run: echo hi\n" + "# padding\n" * 300_000,
    "huge-string": "run: '" + "x" * 3_000_000 + "'\n",
    "huge-cpus": "run: echo\nresources: {cpus: 1e308}\n",
    "inf-cpus": "run: echo\nresources: {cpus: .inf}\n",
    "nan-cpus": "run: echo\nresources: {cpus: .nan}\n",
    "neg-cpus": "run: echo\nresources: {cpus: -1}\n",
    "huge-memory": "run: echo\nresources: {memory: 99999999999T}\n",
    "int-memory-overflow": "run: echo\nresources: {memory: " + "9" * 400 + "}\n",
    "bad-timeout": "run: echo\nresources: {timeout: -5m}\n",
    "run-list": "run: [echo, hi]\n",
    "run-null": "run: null\n",
    "run-missing": "name: x\n",
    "empty": "",
    "only-comment": "# nothing\n",
    "scalar-doc": "42\n",
    "list-doc": "- run: echo\n",
    "two-docs": "run: echo a\n---\nrun: echo b\n",
    "binary": "\x00\x01\x02\xff",
    "bad-utf8": None,  # written as raw bytes below
    "tabs": "run:\techo\n\tx: 1\n",
    "dup-keys": "run: echo a\nrun: echo b\nrun: echo c\n",
    "merge-key": "base: &b {cpus: 1}\nrun: echo\nresources: {<<: *b, memory: 1T}\n",
    "timestamp": "run: 2001-12-14t21:59:43.10-05:00\n",
    "unicode-keys": "rün: echo\nnäme: 'ǅ'\n",
    "rtl-name": "run: echo\nname: \u202eevil\u202d\n",
    "env-bad-name": "run: echo\nenvs: {'A B': 1, '1X': 2}\n",
    "env-nested": "run: echo\nenvs: {A: {B: C}}\n",
    "workdir-missing": "run: echo\nworkdir: /nonexistent/dir/here\n",
    "workdir-file": "run: echo\nworkdir: /etc/passwd\n",
    "unknown-tag": "run: !custom echo\n",
    "set-tag": "run: !!set {a, b}\n",
    "binary-tag": "run: !!binary aGVsbG8=\n",
    "complex-key": "? [a, b]\n: c\nrun: echo\n",
}


def write_doc(directory: str, name: str, text: str | None) -> str:
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "wb") as handle:
        handle.write(
            b"run: \xff\xfe echo\n" if text is None else text.encode("utf-8", "surrogatepass")
        )
    return path


# Valid tasks (queued): a list `run` is joined, a timestamp-looking `run` stays text.
VALID_OK = {"rtl-name", "run-list", "timestamp", "two-docs"}  # two docs: two tasks (SkyPilot)


@pytest.mark.parametrize("name", sorted(HOSTILE_DOCUMENTS))
def test_hostile_task_documents_in_process(
    home: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = write_doc(str(tmp_path), name, HOSTILE_DOCUMENTS[name])
    code = check_rejected_or_valid(
        home, ["jobs", "launch", "--async", path], capsys, may_succeed=name in VALID_OK
    )
    TRIED["yaml"] += 1
    assert code == (0 if name in VALID_OK else 2)


@pytest.mark.parametrize("name", sorted(HOSTILE_DOCUMENTS))
def test_hostile_service_documents_in_process(
    home: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    text = HOSTILE_DOCUMENTS[name]
    if text is not None and name not in ("empty", "only-comment", "scalar-doc", "list-doc"):
        text = "name: svc\n" + text
    path = write_doc(str(tmp_path), name, text)
    if name in VALID_OK:
        return  # valid: it would start a real service
    check_rejected_or_valid(home, ["services", "up", path], capsys, may_succeed=False)
    TRIED["yaml"] += 1


@pytest.mark.parametrize(
    "name", ["python-apply", "python-new", "billion-laughs", "huge-file", "deep-nesting"]
)
def test_hostile_task_documents_real_cli(sky: SkyMini, tmp_path: Any, name: str) -> None:
    path = write_doc(str(tmp_path), name, HOSTILE_DOCUMENTS[name])
    os.makedirs(sky.home, 0o700, exist_ok=True)
    before = state_snapshot(sky.home)
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "sky_mini", "jobs", "launch", "--async", path],
        env=sky.env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc
    assert_no_traceback(proc.stderr)
    assert path in proc.stderr or os.path.basename(path) in proc.stderr
    assert state_snapshot(sky.home) == before
    assert not os.path.exists(os.path.join(str(tmp_path), PWNED))
    TRIED["yaml"] += 1


FUZZ = settings(
    max_examples=int(os.environ.get("SKY_MINI_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@FUZZ
@given(data=task_like)
def test_fuzzed_task_yaml(
    home: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], data: dict[str, Any]
) -> None:
    from sky_mini import spec
    from sky_mini.errors import SpecError

    path = os.path.join(str(tmp_path), "task.yaml")
    with open(path, "w") as handle:
        handle.write(dump(data))
    try:
        spec.load_task(path)
        valid = True
    except SpecError:
        valid = False
    TRIED["yaml"] += 1
    if valid:
        return  # a valid task would be queued for real; the invalid ones are the point
    check_rejected_or_valid(home, ["jobs", "launch", "--async", path], capsys, may_succeed=False)


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzzed_raw_text_task(
    home: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    from sky_mini import spec
    from sky_mini.errors import SpecError

    path = os.path.join(str(tmp_path), "raw.yaml")
    with open(path, "wb") as handle:
        handle.write(text.encode("utf-8", "surrogatepass"))
    TRIED["yaml"] += 1
    try:
        spec.load_task(path)
        return
    except SpecError:
        pass
    check_rejected_or_valid(home, ["jobs", "launch", "--async", path], capsys, may_succeed=False)


@FUZZ
@given(data=service_like)
def test_fuzzed_service_yaml(
    home: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], data: dict[str, Any]
) -> None:
    from sky_mini import spec
    from sky_mini.errors import SpecError

    path = os.path.join(str(tmp_path), "svc.yaml")
    with open(path, "w") as handle:
        handle.write(dump(data))
    TRIED["yaml"] += 1
    try:
        spec.load_service(path)
        return
    except SpecError:
        pass
    check_rejected_or_valid(home, ["services", "up", path], capsys, may_succeed=False)


# -- CLI arguments ---------------------------------------------------------------------------

BAD_IDS = [
    "../x",
    "-1",
    "1e9",
    "0",
    "00",
    "1.5",
    "9" * 400,
    "١٢",  # Arabic-Indic digits: str.isdigit() says yes
    "²",
    "𝟙",
    "",
    " ",
    "1 2",
    "0x10",
    "+3",
    "\x00",
    "ID",
    "/etc/passwd",
]


@pytest.mark.parametrize("raw", BAD_IDS)
@pytest.mark.parametrize("command", [["jobs", "logs"], ["jobs", "cancel"], ["jobs", "wait"]])
def test_bad_job_ids_exit_2(
    home: str, capsys: pytest.CaptureFixture[str], command: list[str], raw: str
) -> None:
    argv = [*command, "--", raw] if raw.startswith("-") else [*command, raw]
    check_rejected_or_valid(home, argv, capsys, may_succeed=False)
    TRIED["args"] += 1


def test_huge_but_valid_id_is_a_clean_not_found(
    home: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_in_process(["jobs", "logs", "--no-follow", "123456789012"], capsys)
    assert code in (1, 2) and "123456789012" in err, err
    assert_no_traceback(err)


@FUZZ
@given(raw=st.text(min_size=1, max_size=30).filter(lambda s: not (s.isascii() and s.isdigit())))
def test_fuzzed_job_ids(home: str, capsys: pytest.CaptureFixture[str], raw: str) -> None:
    TRIED["args"] += 1
    argv = ["jobs", "cancel", "--", raw]
    check_rejected_or_valid(home, argv, capsys, may_succeed=False)


@pytest.mark.parametrize(
    "extra",
    [
        ["--cpus", "abc"],
        ["--cpus", "-1"],
        ["--cpus", "nan"],
        ["--cpus", "1e400"],
        ["--memory", "lots"],
        ["--memory", "1" + "0" * 400],
        ["--timeout", "-1s"],
        ["--timeout", "forever"],
        ["--env", "NOEQUALS"],
        ["--env", "=x"],
        ["--env", "A B=1"],
        ["--name", "x" * 5000],
    ],
)
def test_bad_launch_flags_exit_2(
    home: str, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    check_rejected_or_valid(
        home, ["jobs", "launch", "--async", *extra, "--", "true"], capsys, may_succeed=False
    )
    TRIED["args"] += 1


def test_report_inputs_tried() -> None:
    """Runs last in this module: the count of inputs tried, for docs/RELIABILITY.md."""
    report(f"hostile input: {TRIED['yaml']} YAML documents, {TRIED['args']} argument sets")
