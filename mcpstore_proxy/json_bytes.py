"""JSON for the messages the proxy writes itself: orjson, and pydantic-core for what orjson cannot encode."""

from __future__ import annotations

import orjson
import pydantic_core

__all__ = ["to_json"]


def to_json(message: object) -> bytes:
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:  # an integer past 64 bits, which JSON allows
        return pydantic_core.to_json(message)
