"""Small validators shared by task and service specs: each names the file and the dotted
key, says what was found and what is allowed (a :class:`SpecError`, exit 2)."""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sky_mini.errors import SpecError, UsageError
from sky_mini.lazyre import lazy
from sky_mini.units import parse_duration

MAX_NAME_CHARS = 100
ENV_NAME_RE = lazy(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REF_RE = lazy(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def describe(value: object) -> str:
    """Say what was found, briefly and without rendering a large structure."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        digits = len(str(abs(value))) if abs(value) < 10**100 else 101
        return f"an integer ({value})" if digits <= 100 else "a very long integer"
    if isinstance(value, float):
        return f"a number ({value:g})"
    if isinstance(value, str):
        return f"the string {short(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a value of type {type(value).__name__}"


def short(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


def check_keys(data: Mapping[Any, Any], allowed: Sequence[str], path: str, prefix: str) -> None:
    for key in data:
        if isinstance(key, str) and key in allowed:
            continue
        shown = key if isinstance(key, str) else str(key)[:60]
        dotted = f"{prefix}{shown}"
        hint = ""
        if isinstance(key, str):
            import difflib  # only to suggest a key: not on the cron path

            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                hint = f"did you mean '{close[0]}'? "
        raise SpecError(
            path, dotted, f"unknown key; {hint}allowed keys here: {', '.join(sorted(allowed))}"
        )


def mapping(value: object, path: str, key: str, allowed: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise SpecError(path, key, f"expected a mapping of {allowed}; found {describe(value)}")
    return value


def check_text(text: str, path: str, key: str) -> str:
    """Reject strings that cannot be passed to exec/environ: NUL, lone surrogates."""
    if "\0" in text:
        raise SpecError(path, key, "must not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(path, key, "contains characters that are not valid Unicode") from None
    return text


COMMAND_ALLOWED = "a shell command (a string, or a list of strings run one per line)"


def parse_run(value: object, path: str) -> str:
    run = parse_command(value, path, "run", required=True)
    if run is None:
        raise SpecError(path, "run", f"missing; give {COMMAND_ALLOWED}")
    return run


def parse_command(value: object, path: str, key: str, *, required: bool) -> str | None:
    """A shell command: a string, or a list of strings joined with newlines."""
    allowed = COMMAND_ALLOWED
    if value is None:
        if required:
            raise SpecError(path, key, f"missing; give {allowed}")
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise SpecError(
                    path, f"{key}[{index}]", f"expected a string; found {describe(item)}"
                )
        text = "\n".join(value)
    elif isinstance(value, str):
        text = value
    else:
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    if not text.strip():
        if required:
            raise SpecError(path, key, f"is empty; give {allowed}")
        return None
    return check_text(text, path, key)


def parse_name(value: object, path: str, key: str) -> str | None:
    allowed = f"a string of 1 to {MAX_NAME_CHARS} characters on one line"
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(path, key, f"expected {allowed} (quote it); found {describe(value)}")
    if not value.strip() or len(value) > MAX_NAME_CHARS:
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        raise SpecError(path, key, f"must not contain newlines or control characters; {allowed}")
    return check_text(value, path, key)


def bad_env_name(name: object) -> str:
    shown = short(name) if isinstance(name, str) else describe(name)
    return (
        f"{shown} is not a valid environment variable name; use letters, digits and "
        "underscores, not starting with a digit (e.g. MY_VAR)"
    )


def env_value(value: object, path: str, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise SpecError(
        path,
        key,
        f"expected a string, number or boolean; found {describe(value)} (use '' for empty)",
    )


def parse_envs(value: object, path: str, key: str) -> dict[str, str]:
    if value is None:
        return {}
    raw = mapping(value, path, key, "NAME: value pairs")
    envs: dict[str, str] = {}
    for name, item in raw.items():
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            raise SpecError(path, key, bad_env_name(name))
        envs[name] = check_text(env_value(item, path, f"{key}.{name}"), path, f"{key}.{name}")
    return envs


def parse_env_block(value: object, path: str, key: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """``envs``/``secrets`` of a task: values, and the names whose value is null (they must
    be given at launch). Numbers and booleans become strings."""
    if value is None:
        return {}, ()
    raw = mapping(value, path, key, "NAME: value pairs")
    values: dict[str, str] = {}
    required: list[str] = []
    for name, item in raw.items():
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            raise SpecError(path, key, bad_env_name(name))
        if item is None:
            required.append(name)
            continue
        values[name] = check_text(env_value(item, path, f"{key}.{name}"), path, f"{key}.{name}")
    return values, tuple(required)


def yaml_dir(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def parse_workdir(value: object, path: str, key: str, base: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict) and "url" in value:
        raise SpecError(
            path,
            key,
            "a git repository (url/ref) is not cloned by sky-mini; clone it yourself and "
            "give the directory's path",
        )
    if not isinstance(value, str) or not value.strip():
        raise SpecError(
            path,
            key,
            f"expected a directory path (relative to the YAML file); found {describe(value)}",
        )
    check_text(value, path, key)
    resolved = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    if not os.path.isdir(resolved):
        raise SpecError(
            path,
            key,
            f"{short(value)} resolves to {resolved!r}, which is not an existing directory; "
            "create it or fix the path (relative paths are relative to the YAML file)",
        )
    return resolved


def parse_with(
    parser: Callable[[str | int | float], float], value: object, path: str, key: str, allowed: str
) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    try:
        number = float(parser(value))
    except (ValueError, OverflowError):
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}") from None
    if not math.isfinite(number):
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    return number


def parse_timeout(value: object, path: str, key: str) -> float:
    allowed = "a duration greater than 0, such as 90, 30s, 5m or 2h"
    number = parse_with(parse_duration, value, path, key, allowed)
    if number <= 0:
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    return number


def parse_seconds(value: object, path: str, key: str, *, allow_zero: bool) -> float:
    bound = "0 or more" if allow_zero else "greater than 0"
    allowed = f"a number of seconds {bound} (or a duration such as 30s)"
    number = parse_with(parse_duration, value, path, key, allowed)
    if number < 0 or (number == 0 and not allow_zero):
        raise SpecError(path, key, f"expected {allowed}; found {describe(value)}")
    return number


def parse_int(value: object, path: str, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(
            path, key, f"expected a whole number from {low} to {high}; found {describe(value)}"
        )
    return value


def expand_env_refs(text: str, envs: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` for each NAME in ``envs``; leave ``$NAME`` and unknown
    ``${X}`` for the shell."""

    def substitute(match: re.Match[str]) -> str:
        return envs.get(match.group(1), match.group(0))

    return _ENV_REF_RE.sub(substitute, text)


def parse_env_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """Parse repeated ``--env K=V`` into a dict (later ones win). ``V`` may be empty."""
    result: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE, e.g. --env DATE=2024-01-01")
        if not ENV_NAME_RE.fullmatch(key):
            raise UsageError(f"--env {item!r}: {bad_env_name(key)}")
        if "\0" in value:
            raise UsageError(f"--env {item!r}: the value must not contain a NUL character")
        result[key] = value
    return result
