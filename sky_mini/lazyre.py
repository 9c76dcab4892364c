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
