"""What an upstream may ask a client for (sampling, elicitation, roots), and which of it a client declared."""

from __future__ import annotations

from typing import Final, Literal

from mcp import types

__all__ = ["ALL_CLIENT_CAPABILITIES", "ClientCapability", "declared_by"]

ClientCapability = Literal["sampling", "elicitation", "roots"]
_ORDER: Final[tuple[ClientCapability, ...]] = ("sampling", "elicitation", "roots")
ALL_CLIENT_CAPABILITIES: Final[frozenset[ClientCapability]] = frozenset(_ORDER)
_SETS: Final[dict[tuple[ClientCapability, ...], frozenset[ClientCapability]]] = {}
"""Each combination's one set: a session keeps its own for its whole life, and a set is 0.2 KiB however small."""


def declared_by(capabilities: types.ClientCapabilities | None) -> frozenset[ClientCapability]:
    """Which of what an upstream may ask a client for (sampling, elicitation, roots) `capabilities` declare."""
    declared: tuple[ClientCapability, ...] = (
        () if capabilities is None else tuple(c for c in _ORDER if getattr(capabilities, c, None) is not None)
    )
    found = _SETS.get(declared)
    if found is None:
        found = _SETS[declared] = frozenset(declared)
    return found
