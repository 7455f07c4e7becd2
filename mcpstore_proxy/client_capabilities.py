"""What an upstream may ask a client for (sampling, elicitation, roots), and which of it a client declared."""

from __future__ import annotations

from typing import Final, Literal

from mcp import types

__all__ = ["ALL_CLIENT_CAPABILITIES", "ClientCapability", "declared_by"]

ClientCapability = Literal["sampling", "elicitation", "roots"]
ALL_CLIENT_CAPABILITIES: Final[frozenset[ClientCapability]] = frozenset({"sampling", "elicitation", "roots"})


def declared_by(capabilities: types.ClientCapabilities | None) -> frozenset[ClientCapability]:
    """Which of what an upstream may ask a client for (sampling, elicitation, roots) `capabilities` declare."""
    if capabilities is None:
        return frozenset()
    return frozenset(c for c in ALL_CLIENT_CAPABILITIES if getattr(capabilities, c, None) is not None)
