"""gzip bodies for answers that repeat a large constant part, compressed once and not per answer.

A listing of a thousand tools is some 400 KB of JSON, and two answers to `tools/list` differ only in their id. So
such an answer is laid out with its id last (`{"jsonrpc":"2.0","result":...,"id":7}`): everything before the id
(the `head`) is deflated once and flushed to a byte boundary (`Z_SYNC_FLUSH`), and each answer appends its `tail`
(the id and the closing brace) as stored, uncompressed deflate blocks, then the gzip trailer: the CRC-32 continued
over the tail, and the length. An answer costs a few dozen bytes of work, and the client receives a fortieth of
the bytes (RFC 1952: one gzip member, which every HTTP client's decoder reads).

Nothing the client sent is deflated together with anything else (the tail is stored as is), so the compressed
length reveals nothing about it (no BREACH-style side channel).
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = ["GZIP_MINIMUM_SIZE", "GzipHead", "accepts_gzip"]

GZIP_MINIMUM_SIZE: Final = 1024
"""Bodies smaller than this are sent as they are: compressing them saves less than it costs the client."""

_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no flags, no mtime, OS unknown
_STORED_MAX: Final = 0xFFFF
"""The most bytes one stored deflate block holds."""
_CODINGS: Final = frozenset((b"gzip", b"x-gzip"))


class GzipHead:
    """A gzip body's constant head, deflated once; `body(tail)` is the whole gzip body of `head + tail`."""

    __slots__ = ("_compressed", "_crc", "_size")

    def __init__(self, head: bytes, *, level: int = 6) -> None:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate: the gzip framing is ours
        self._compressed = _GZIP_HEADER + deflate.compress(head) + deflate.flush(zlib.Z_SYNC_FLUSH)
        self._crc = zlib.crc32(head)
        self._size = len(head)

    def body(self, tail: bytes) -> bytes:
        """The gzip body of the head followed by `tail`, `tail` stored uncompressed."""
        parts = [self._compressed]
        start = 0
        while True:
            chunk = tail[start : start + _STORED_MAX]
            start += len(chunk)
            is_final = start >= len(tail)
            size = len(chunk)
            # A stored block: BFINAL and BTYPE 00 in one byte (the stream is at a byte boundary), LEN, NLEN.
            parts.append(bytes((is_final, size & 0xFF, size >> 8, ~size & 0xFF, (~size >> 8) & 0xFF)))
            parts.append(chunk)
            if is_final:
                break
        crc = zlib.crc32(tail, self._crc)
        parts.append(crc.to_bytes(4, "little") + ((self._size + len(tail)) & 0xFFFFFFFF).to_bytes(4, "little"))
        return b"".join(parts)


def accepts_gzip(accept_encoding: bytes | None) -> bool:
    """Whether a request's `Accept-Encoding` (RFC 9110 §12.5.3) lets the answer be gzip-compressed: `gzip` (or
    `x-gzip`) listed with a weight above 0, or not listed and `*` listed with a weight above 0. A weight that does
    not parse counts as 0."""
    if not accept_encoding:
        return False
    wildcard = False
    for member in accept_encoding.lower().split(b","):
        coding, _, parameters = member.partition(b";")
        coding = coding.strip()
        if coding in _CODINGS:
            return _weight(parameters) > 0
        if coding == b"*":
            wildcard = _weight(parameters) > 0
    return wildcard


def _weight(parameters: bytes) -> float:
    name, _, value = parameters.partition(b"=")
    if name.strip() != b"q":
        return 1.0 if not parameters.strip() else 0.0
    try:
        weight = float(value.strip())
    except ValueError:
        return 0.0
    return weight if 0.0 <= weight <= 1.0 else 0.0
