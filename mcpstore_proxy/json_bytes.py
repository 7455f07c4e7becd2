"""JSON as the proxy reads and writes it itself, past the SDK's models.

Reading uses pydantic-core's parser, the one the SDK's models validate with, so a message means the same on the
fast path as on the SDK's: integers of any size stay integers (orjson would turn one past 64 bits into a float
and change the payload). Writing uses orjson, and pydantic-core for what orjson cannot encode.
"""

from __future__ import annotations

from typing import Final

import orjson
import pydantic_core

__all__ = ["from_json", "to_json"]


from_json: Final = pydantic_core.from_json
"""Parse JSON; raises ValueError for anything that is not JSON. The parser itself, not a function calling it: it
reads every message the lanes take."""


def to_json(message: object) -> bytes:
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:  # an integer past 64 bits, which JSON allows
        return pydantic_core.to_json(message)
