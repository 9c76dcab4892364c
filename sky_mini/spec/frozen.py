"""Immutable value classes without a dataclass build at import.

``@dataclass(frozen=True)`` writes ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__`` and ``__delattr__`` as source text and ``exec``s each one when the module is
imported: ~1 ms a class here, paid by every ``jobs launch --async``. A spec class is instead
declared ``@dataclass(init=False, repr=False, eq=False)`` (which generates no code, and
keeps ``fields()``, ``replace()`` and ``asdict()`` working), writes its own ``__init__``
that passes ``locals()`` to :func:`assign`, and inherits the rest from :class:`Frozen`,
which reads the fields' ``compare``/``repr`` flags as the generated methods would.
"""

from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, fields
from typing import Any


def assign(obj: object, values: dict[str, Any]) -> None:
    """Set every field of ``obj`` from ``values`` (an ``__init__``'s ``locals()``); a
    field with a ``default_factory`` given as None gets a fresh default."""
    for f in fields(obj):  # type: ignore[arg-type]
        value = values[f.name]
        if value is None and f.default_factory is not MISSING:
            value = f.default_factory()
        object.__setattr__(obj, f.name, value)


class Frozen:
    """Equality, hashing, repr and immutability as ``@dataclass(frozen=True)`` has them."""

    __slots__ = ()

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.compare)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        shown = (f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)  # type: ignore[arg-type]
        return f"{type(self).__qualname__}({', '.join(shown)})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
