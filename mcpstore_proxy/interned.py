"""Equal values kept once: what many upstream sessions were told alike is held by one object, not one per session.

Every session with an upstream keeps the upstream's `initialize` answer (its capabilities, server info and
instructions) for its whole life: about 2 KiB per idle session, and more for an upstream with long instructions,
though the copies of one upstream are nearly always equal. Every handshake-era client connection likewise keeps
the client's `initialize` parameters (about 1.5 KiB), equal for the clients of one kind. Each keeps the first equal
copy instead of its own.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

__all__ = ["Interned"]

_T = TypeVar("_T", bound=BaseModel)


class Interned(Generic[_T]):
    """At most `bound` models, each the first of its wire form (its JSON, by alias): equal models share it; the
    oldest goes first."""

    __slots__ = ("_bound", "_values")

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._values: dict[str, _T] = {}

    def __len__(self) -> int:
        return len(self._values)

    def get(self, value: _T) -> _T:
        """The model kept for `value`'s wire form, or `value`, kept from now on for it."""
        key = value.model_dump_json(by_alias=True)
        found = self._values.get(key)
        if found is not None:
            return found
        if len(self._values) >= self._bound:
            del self._values[next(iter(self._values))]
        self._values[key] = value
        return value
