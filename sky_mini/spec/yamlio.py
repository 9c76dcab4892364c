"""Reading spec files safely: size cap, UTF-8, a safe YAML loader, and a scan of the event
stream (nesting, aliases, alias expansion, duplicate keys, document count) before anything
is built, so a hostile or broken file is refused cleanly instead of running code or
exhausting memory.

yaml is imported inside these functions: `jobs launch -- CMD` (the cron path) never parses
YAML and should not pay ~20 ms to import it. Cron runs the same task file every time, so
:func:`load_documents` can keep what a file parsed to in a cache keyed by a hash of its
bytes (``$SKY_MINI_HOME/cache/yaml``): an unchanged file is then not parsed, and yaml not
imported. An entry is written only once the file passed every check here, and only when
the documents survive a JSON round trip exactly (same types, same key order) and give no
``secrets`` values; the caller validates the documents every time, cached or not. An
unreadable entry is ignored and rewritten.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import TYPE_CHECKING, Any

from sky_mini.errors import SpecError
from sky_mini.lazyre import import_yaml
from sky_mini.spec.values import describe, short
from sky_mini.units import format_size

if TYPE_CHECKING:
    import yaml

MAX_FILE_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64
MAX_DOCUMENTS = 64
CACHE_VERSION = 1  # bump when the loader or the checks change what a file's bytes yield
MAX_CACHE_ENTRIES = 64
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


def _make_loader(base: type[Any]) -> type[Any]:
    """A safe loader that keeps dates as strings (``DATE: 2024-01-01`` stays text)."""
    resolvers = {
        first: [(tag, regexp) for tag, regexp in entries if tag != _TIMESTAMP_TAG]
        for first, entries in base.yaml_implicit_resolvers.items()
    }
    return type("SpecLoader", (base,), {"yaml_implicit_resolvers": resolvers})


_LOADER: type[Any] | None = None  # built on first use (tests may substitute their own)


def _loader() -> type[Any]:
    """The spec loader class: libyaml's CSafeLoader when available, else the pure-Python one."""
    global _LOADER
    if _LOADER is None:
        try:
            from yaml import CSafeLoader as base
        except ImportError:  # PyYAML built without libyaml
            from yaml import SafeLoader as base  # type: ignore[assignment]
        _LOADER = _make_loader(base)
    return _LOADER


def _read_bytes(path: str) -> bytes:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SpecError(path, None, "no such file; check the path") from None
    except OSError as exc:
        raise SpecError(
            path, None, f"cannot read the file ({exc.strerror}); check the path"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(path, None, "not a regular file; give the path of a YAML file")
    if info.st_size > MAX_FILE_BYTES:
        raise SpecError(
            path,
            None,
            f"file is {format_size(info.st_size)}, larger than the "
            f"{format_size(MAX_FILE_BYTES)} allowed for a spec; is this the right file?",
        )
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(
            path, None, f"cannot read the file ({exc.strerror}); check its permissions"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(path, None, f"file is larger than {format_size(MAX_FILE_BYTES)}")
    return raw


def _decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            path, None, f"not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None


def load_documents(path: str, what: str, cache_dir: str | None = None) -> list[Any]:
    """Every YAML document in ``path`` (at least one), built only after the event scan
    passed. An empty file is refused; an empty document between ``---`` is kept as None.
    With ``cache_dir``, a file parsed before (the same bytes) comes from the cache."""
    raw = _read_bytes(path)
    key = None
    if cache_dir is not None:
        key = _cache_key(raw)
        cached = _cache_get(cache_dir, key)
        if cached is not None:
            return cached
    text = _decode(raw, path)
    import_yaml()  # PyYAML without its import-time reader regex (lazyre)
    import yaml

    count = _check_events(text, path)
    loader = _loader()(text)
    documents: list[Any] = []
    try:
        while loader.check_data():
            documents.append(loader.get_data())
    except yaml.YAMLError as exc:
        raise SpecError(path, None, _yaml_problem(exc)) from None
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        raise SpecError(
            path, None, f"a value cannot be read ({exc}); shorten or quote it"
        ) from None
    except RecursionError:
        raise SpecError(path, None, f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()
    if count > 1 and all(doc is None for doc in documents):
        documents = [None]
    if not documents or (len(documents) == 1 and documents[0] is None):
        raise SpecError(path, None, f"the file is empty; it must be a mapping describing {what}")
    if cache_dir is not None and key is not None:
        _cache_put(cache_dir, key, documents)
    return documents


def _cache_key(raw: bytes) -> str:
    """A hash of the file's bytes and of everything here that decides what they yield."""
    try:
        from _blake2 import blake2b  # what hashlib re-exports, without hashlib's ~6 ms import
    except ImportError:  # pragma: no cover - CPython always has it
        from hashlib import blake2b
    limits = (CACHE_VERSION, MAX_FILE_BYTES, MAX_ALIASES, MAX_EXPANDED_NODES, MAX_DEPTH)
    digest = blake2b(repr((*limits, MAX_DOCUMENTS)).encode(), digest_size=20)
    digest.update(b"\0")
    digest.update(raw)
    return digest.hexdigest()


def _cache_get(cache_dir: str, key: str) -> list[Any] | None:
    """The cached documents for ``key``, or None (absent, unreadable or not ours)."""
    import json

    try:
        with open(os.path.join(cache_dir, key + ".json"), "rb") as handle:
            entry = json.loads(handle.read(MAX_FILE_BYTES * 8))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION:
        return None
    documents = entry.get("documents")
    if not isinstance(documents, list) or not documents:
        return None
    return documents


def _cache_put(cache_dir: str, key: str, documents: list[Any]) -> None:
    """Keep ``documents`` for ``key`` when JSON gives them back exactly; never fails the
    launch (a cache that cannot be written only means parsing next time)."""
    import json

    if any(_secret_values(doc) for doc in documents):
        return  # the cache would be another plain-text copy of the secret (CONTRACT)
    try:
        text = json.dumps({"version": CACHE_VERSION, "documents": documents}, allow_nan=False)
        if not _same(json.loads(text)["documents"], documents):
            return  # e.g. a non-string key, a set or bytes: parse this file every time
    except (TypeError, ValueError, RecursionError):
        return
    path = os.path.join(cache_dir, key + ".json")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
        _trim_cache(cache_dir)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _secret_values(document: Any) -> bool:
    """Whether a task document gives a value under ``secrets`` (not only names to fill)."""
    secrets = document.get("secrets") if isinstance(document, dict) else None
    if isinstance(secrets, dict):
        return any(value is not None for value in secrets.values())
    return secrets is not None


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types throughout (``1 == 1.0 == True`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _trim_cache(cache_dir: str) -> None:
    """Keep the newest MAX_CACHE_ENTRIES entries (files generated per run would pile up)."""
    entries = []
    for name in os.listdir(cache_dir):
        with contextlib.suppress(OSError):
            entries.append((os.stat(os.path.join(cache_dir, name)).st_mtime_ns, name))
    entries.sort(reverse=True)
    for _, name in entries[MAX_CACHE_ENTRIES:]:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(cache_dir, name))


def load_mapping(path: str, what: str) -> dict[Any, Any]:
    """The one mapping in a single-document file (services, config-like specs)."""
    documents = load_documents(path, what)
    if len(documents) > 1:
        raise SpecError(path, None, f"more than one YAML document ('---'); put one {what} per file")
    return require_mapping(documents[0], path, what)


def require_mapping(data: object, path: str, what: str) -> dict[Any, Any]:
    if data is None:
        raise SpecError(
            path, None, f"the document is empty; it must be a mapping describing {what}"
        )
    if not isinstance(data, dict):
        raise SpecError(
            path,
            None,
            f"the top level must be a mapping (key: value lines) describing {what}; "
            f"found {describe(data)}",
        )
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    import_yaml()  # PyYAML without its import-time reader regex (lazyre)
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if "maximum nesting depth" in problem:
            # libyaml 0.2.6 (in PyYAML 6.0.4 wheels) stops at depth 1000 while scanning,
            # before our own check sees the events: say it the same way either way.
            problem = f"nested more than {MAX_DEPTH} levels deep"
        if mark is not None:
            return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
        return f"invalid YAML: {problem}"
    return f"invalid YAML: {exc}"


class _Frame:
    """One open collection while scanning events (see :func:`_check_events`). A plain
    class: a dataclass build costs the cron path about a millisecond at import."""

    __slots__ = ("anchor", "expect_key", "is_mapping", "keys", "size")

    def __init__(self, is_mapping: bool, anchor: str | None) -> None:
        self.is_mapping = is_mapping
        self.anchor = anchor
        self.size = 1
        self.expect_key = True
        self.keys: set[str] = set()


def _check_events(text: str, path: str) -> int:
    """Scan the event stream before building anything: at most MAX_DOCUMENTS documents
    (returned: how many), bounded nesting,
    at most MAX_ALIASES aliases, no recursive alias, no duplicate keys, and at most
    MAX_EXPANDED_NODES nodes once aliases are expanded ("billion laughs")."""
    import_yaml()  # PyYAML without its import-time reader regex (lazyre)
    import yaml

    stack: list[_Frame] = []
    anchors: dict[str, int | None] = {}  # None while the anchored node is still open
    documents = 0
    aliases = 0

    def where(event: yaml.Event) -> str:
        mark = event.start_mark
        return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"

    def finish_node(size: int, event: yaml.Event) -> None:
        if not stack:
            return
        parent = stack[-1]
        if parent.is_mapping:
            if parent.expect_key and isinstance(event, yaml.ScalarEvent):
                if event.value in parent.keys and event.value != "<<":
                    raise SpecError(
                        path,
                        None,
                        f"duplicate key {short(event.value)} at {where(event)}; "
                        "each key may appear once",
                    )
                parent.keys.add(event.value)
            parent.expect_key = not parent.expect_key
        parent.size += size
        if parent.size > MAX_EXPANDED_NODES:
            raise SpecError(
                path,
                None,
                f"expands to more than {MAX_EXPANDED_NODES} values (aliases multiply); "
                "a spec this large is not allowed",
            )

    try:
        for event in yaml.parse(text, Loader=_loader()):
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > MAX_DOCUMENTS:
                    raise SpecError(
                        path,
                        None,
                        f"more than {MAX_DOCUMENTS} YAML documents ('---' at {where(event)}); "
                        "split the pipeline into several files",
                    )
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise SpecError(
                        path, None, f"more than {MAX_ALIASES} aliases (*name); not allowed"
                    )
                if event.anchor not in anchors:
                    raise SpecError(
                        path,
                        None,
                        f"alias *{event.anchor} at {where(event)} is not defined; "
                        f"an anchor &{event.anchor} must come before it",
                    )
                if anchors[event.anchor] is None:
                    raise SpecError(
                        path,
                        None,
                        f"alias *{event.anchor} at {where(event)} refers to itself; "
                        "recursive structures are not allowed",
                    )
                finish_node(anchors[event.anchor] or 1, event)
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor is not None:
                    anchors[event.anchor] = 1
                finish_node(1, event)
            elif isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise SpecError(
                        path,
                        None,
                        f"nested more than {MAX_DEPTH} levels deep at {where(event)}",
                    )
                if event.anchor is not None:
                    anchors[event.anchor] = None
                is_mapping = isinstance(event, yaml.MappingStartEvent)
                stack.append(_Frame(is_mapping=is_mapping, anchor=event.anchor))
            elif isinstance(event, yaml.CollectionEndEvent) and stack:
                frame = stack.pop()
                if frame.anchor is not None:
                    anchors[frame.anchor] = frame.size
                finish_node(frame.size, event)
    except yaml.YAMLError as exc:
        raise SpecError(path, None, _yaml_problem(exc)) from None
    return documents
