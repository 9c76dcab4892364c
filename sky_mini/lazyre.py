"""Regular expressions compiled on first use.

``re.compile`` runs the pure-Python regex compiler (~0.1-0.3 ms a pattern here); a module
on the cron path that compiles its patterns at import pays for every one of them on every
``jobs launch --async``, though most calls use none. A leaf module: standard library only.
"""

from __future__ import annotations

import re
from typing import Any, cast


class LazyPattern:
    """Stands in for ``re.compile(pattern, flags)``: compiles at the first method call
    (``match``, ``fullmatch``, ``sub``...), then delegates to the compiled pattern."""

    __slots__ = ("compiled", "flags", "source")

    def __init__(self, source: str, flags: int) -> None:
        self.source = source
        self.flags = flags
        self.compiled: re.Pattern[str] | None = None

    def __getattr__(self, name: str) -> Any:
        if self.compiled is None:
            self.compiled = re.compile(self.source, self.flags)
        return getattr(self.compiled, name)

    def __repr__(self) -> str:
        return f"lazy({self.source!r}, {self.flags!r})"


def lazy(source: str, flags: int = 0) -> re.Pattern[str]:
    """A pattern compiled when first used; typed as the compiled pattern it becomes."""
    return cast("re.Pattern[str]", LazyPattern(source, flags))


# PyYAML's pure-Python reader compiles this at import (yaml/reader.py, Reader.NON_PRINTABLE):
# a character class over all of Unicode, ~10 ms of PyYAML's ~30 ms import here. libyaml's
# loader, which spec files use, never reads it.
_YAML_NON_PRINTABLE = "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"


def import_yaml() -> Any:
    """``import yaml`` with that one pattern compiled on first use instead of at import.

    ``re.compile`` is wrapped only while PyYAML's modules execute (the CLI and the server
    import it from one thread); any other pattern, or this one if PyYAML changes it, is
    compiled as usual. The pure-Python loader still gets the same check, compiled when it
    first reads a document.
    """
    import sys

    if "yaml" in sys.modules:
        return sys.modules["yaml"]
    real = re.compile

    def compile_nonprintable_lazily(pattern: Any, flags: int = 0) -> Any:
        if pattern == _YAML_NON_PRINTABLE and flags == 0:
            return lazy(pattern)
        return real(pattern, flags)

    re.compile = compile_nonprintable_lazily
    try:
        import yaml
    finally:
        re.compile = real
    return yaml
